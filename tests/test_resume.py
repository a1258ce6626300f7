"""Exact resume: a driver SIGKILLed mid-step and resumed ends where an uninterrupted run ends (with refill
rounds and shuffled mini-batches); a kill during a checkpoint write leaves the previous checkpoint
loadable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from answerkey import cli
from answerkey.learner import checkpoint

pytestmark = pytest.mark.slow  # trains, kills and resumes runs: make check leaves it out

EXAMPLE = "examples/tiny_cpu.toml"
STEPS = 6
KILL_AFTER = 4  # SIGKILL once step 4's checkpoint is complete, i.e. during step 5


def args(policy_dir: Path, out: Path, name: str) -> list[str]:
    return ["rl", EXAMPLE, f"--model.path={policy_dir}", f"--run.out_dir={out}", f"--run.name={name}",
            f"--run.steps={STEPS}", "--run.checkpoint_every=1", "--run.eval_every=3", "--run.eval_problems=8",
            "--run.eval_samples=2", "--run.sample_every=1", "--rollout.problems_per_step=8",
            "--rollout.group_size=4", "--rollout.max_refill_rounds=2", "--learner.mini_batches=2"]


def comparable(run: Path) -> list[dict]:
    """Metrics rows without wall-clock timings (the only thing allowed to differ)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_sigkill_mid_step_then_resume_matches_an_uninterrupted_run(ray_session, policy_dir, tmp_path):
    assert cli.main(args(policy_dir, tmp_path, "straight")) == 0
    steps = [r for r in comparable(tmp_path / "straight") if "rollout/rounds" in r]
    # what resume must reproduce: refill rounds (more problems drawn, more samples) and shuffled mini-batches
    assert any(r["rollout/rounds"] > 1 for r in steps[KILL_AFTER:]), "no refill after the kill point"
    assert all("learner/clip_fraction/mb1" in r for r in steps)

    env = os.environ | {"RAY_ADDRESS": ray_session, "RAY_AUTH_MODE": "disabled"}
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "answerkey.cli", *args(policy_dir, tmp_path, "killed")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not (run / "checkpoints" / f"step_{KILL_AFTER:06d}").exists():
        assert proc.poll() is None, f"the driver exited early: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the driver never wrote the checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint.load(checkpoint.latest(run / "checkpoints")).step
    assert 3 <= killed_at < STEPS, f"the kill landed after the run finished (latest checkpoint {killed_at})"

    assert cli.main([*args(policy_dir, tmp_path, "killed"), "--resume"]) == 0
    assert comparable(run) == comparable(tmp_path / "straight")
    final = f"checkpoints/step_{STEPS:06d}"
    a = load_file(run / final / "model/model.safetensors")
    b = load_file(tmp_path / "straight" / final / "model/model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    opt_a = torch.load(run / final / "learner.pt", weights_only=True)["optimizer"]["state"]
    opt_b = torch.load(tmp_path / "straight" / final / "learner.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)


WRITER = textwrap.dedent("""
    import sys
    import torch
    from answerkey.learner import checkpoint
    from answerkey.learner.learner import Learner
    from answerkey.config import LearnerConfig
    from answerkey.rollout.engine import SamplingParams
    from answerkey.model import build_model
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(sys.argv[2])
    model = build_model("1.4m", len(tok), [tok.eos_token_id or 0], pad_id=tok.pad_token_id)
    learner = Learner(model, LearnerConfig(lr=1e-3), SamplingParams(), total_steps=10)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    learner.optimizer_step()
    for step in range(1, 10_000):
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        checkpoint.save(sys.argv[1], step, model, tok, learner.state_dict(), {"sampler_position": step}, "{}",
                        keep=2)
        print(step, flush=True)
""")


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_loadable(policy_dir, tmp_path):
    """A process writes checkpoints back to back; it is killed while one is half-written."""
    root = tmp_path / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(policy_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()  # the first checkpoint is complete
    deadline = time.monotonic() + 120
    while not any(p.is_dir() and any(p.rglob("*")) for p in root.glob(".tmp-*")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
    proc.kill()
    proc.wait()
    partial = list(root.glob(".tmp-*"))
    latest = checkpoint.latest(root)
    assert latest is not None
    ckpt = checkpoint.load(latest)
    model = AutoModelForCausalLM.from_pretrained(ckpt.model_dir)
    assert next(model.parameters()).flatten()[0].isfinite()
    assert ckpt.run_state["sampler_position"] == ckpt.step
    assert ckpt.learner_state["optimizer_steps"] == 1
    if partial:  # the kill landed mid-write (nearly always): the half-written one is ignored, then cleaned
        assert all(not p.name.startswith(checkpoint.PREFIX) for p in partial)
        assert checkpoint.clean_partial(root) == partial and not list(root.glob(".tmp-*"))
    assert len(checkpoint.complete(root)) <= 2  # keep=2: older ones were pruned only after newer ones landed


def test_an_incomplete_checkpoint_is_refused_naming_what_is_missing(tmp_path):
    (tmp_path / "step_000001" / "model").mkdir(parents=True)
    (tmp_path / "step_000001" / "run.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError,
                       match=r"missing \['model/config.json', 'learner.pt', 'config.json'\]"):
        checkpoint.load(tmp_path / "step_000001")
