"""`answerkey submit` against a real Ray head started here: `ray start --head`, submit the tiny CPU
config, wait for SUCCEEDED, check the run's outputs, stop that Ray.

Not part of the main suite (pyproject's addopts ignore tests/cluster): a second Ray head must not share
the machine with the suite's in-process Ray, so `make test` runs this file after the main suite.

The head gets its own temp dir and free ports, and is stopped by signalling the `ray start --block`
process group it runs in, then killing, by pid, any process whose command line names its temp dir:
never `ray stop`, which would stop every Ray of this user on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from answerkey import chat, cli
from answerkey.model import build_model
from tests.conftest import _processes_mentioning

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head with the dashboard (the job server) on free ports; yields its dashboard URL."""
    temp = tempfile.mkdtemp(prefix="akray-", dir="/tmp")  # short: Ray's unix sockets live under it
    gcs, dash, client, agent, agent_grpc, metrics, env_agent = free_ports(7)
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--disable-usage-stats",
           f"--temp-dir={temp}", f"--port={gcs}", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={env_agent}", "--object-store-memory=268435456"]
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_for(url, head, timeout_s=120)
        yield url
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)  # `ray start --block` can be slow to act on SIGTERM
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):  # ours: they name our temp dir
            for line in _processes_mentioning(temp, wait_s=wait_s):
                _signal(int(line.split(":")[0]), sig)
        assert not _processes_mentioning(temp, wait_s=10), "processes of the test's Ray head survived"
        shutil.rmtree(temp, ignore_errors=True)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        os.kill(pid, sig)


def _wait_for(url: str, head: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}: "
                               f"{head.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2).close()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the Ray dashboard at {url} did not come up in {timeout_s:.0f} s")


def test_answerkey_submit_runs_the_tiny_config_as_a_ray_job(ray_head, tokenizer, tmp_path, monkeypatch,
                                                            capsys):
    model_dir = tmp_path / "policy"
    model = build_model("tiny", len(tokenizer), chat.stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    monkeypatch.chdir(ROOT)  # the job's working_dir is the current directory
    argv = ["submit", "examples/tiny_cpu.toml", "--address", ray_head, f"--model.path={model_dir}",
            f"--run.out_dir={tmp_path / 'runs'}", "--run.name=job", "--run.steps=2", "--rollout.workers=1",
            "--rollout.problems_per_step=4", "--rollout.group_size=2", "--run.eval_problems=4",
            "--run.eval_samples=1"]
    assert cli.main(argv) == 0, capsys.readouterr().out[-3000:]
    out = capsys.readouterr().out
    assert "SUCCEEDED" in out and "answerkey rl" in out  # the status, and the driver's own banner in the logs
    run = tmp_path / "runs" / "job"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2]
    assert all(r["sync/verified"] == 1.0 for r in rows if "reward/mean" in r)
    assert (run / "checkpoints" / "step_000002" / "model" / "model.safetensors").exists()

