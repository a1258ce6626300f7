"""`answerkey submit CONFIG [overrides] [--address URL]`: run `answerkey rl` as a Ray job on a cluster.

    answerkey submit examples/math_8gpu.toml --run.out_dir=/shared/runs --address http://head:8265
    # is the same as
    ray job submit --address http://head:8265 --working-dir . -- answerkey rl examples/math_8gpu.toml ...

The config is validated here first, so a typo fails in a second instead of after the upload. The job's
runtime_env is this directory as `working_dir` (without .venv/, .venv-vllm/, runs/, .git/, caches) and nothing
else: no `pip` step, which would pull a CUDA torch on every node; the cluster's nodes have answerkey
installed (cluster.yaml's setup_commands). The job's logs are streamed until it ends; the exit code is 0
only when Ray reports SUCCEEDED. The address comes from --address, else RAY_ADDRESS, else the local
dashboard (http://127.0.0.1:8265).

A relative `run.out_dir` is relative to the job's copy of the working directory on the head node, which
Ray deletes eventually: on a cluster give an absolute path on shared storage. Needs `ray[default]`.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from pathlib import Path

from answerkey.config import load_config

EXCLUDES = [".venv/", ".venv-vllm/", "runs/", ".git/", "**/__pycache__/", ".pytest_cache/", ".ruff_cache/",
            "*.egg-info/"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def entrypoint(config: str, overrides: list[str]) -> str:
    return shlex.join(["answerkey", "rl", config, *overrides])


def runtime_env(working_dir: str | Path = ".") -> dict:
    return {"working_dir": str(working_dir), "excludes": list(EXCLUDES)}


def submit(config: str, overrides: list[str], address: str | None = None, wait: bool = True,
           print_fn=print) -> int:
    """Submit, stream the logs, and return 0 if the job SUCCEEDED (1 otherwise; with wait=False, 0 once
    submitted)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    cfg = load_config(config, overrides)  # fail fast, before uploading anything
    if not Path(config).resolve().is_relative_to(Path.cwd().resolve()):
        raise ValueError(f"{config} is outside the working directory {Path.cwd()}, "
                         "which is what the job receives")
    if not Path(cfg.run.out_dir).is_absolute():
        print_fn(f"note: run.out_dir={cfg.run.out_dir!r} is relative: the run directory is written inside "
                 "the job's working-dir copy on the head node; pass an absolute --run.out_dir on shared "
                 "storage to keep it")
    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    try:
        client = JobSubmissionClient(address)
    except ConnectionError as exc:
        raise ValueError(f"no Ray job server at {address} (start one with `ray start --head` or "
                         f"`ray up cluster.yaml`): {exc}") from None
    job = client.submit_job(entrypoint=entrypoint(config, overrides), runtime_env=runtime_env())
    print_fn(f"submitted {job} to {address}: {entrypoint(config, overrides)}")
    if not wait:
        return 0
    try:
        asyncio.run(_stream(client, job, print_fn))
    except KeyboardInterrupt:
        print_fn(f"stopped following {job}; it keeps running "
                 f"(`ray job stop {job} --address {address}` ends it)")
        return 1
    status = _final_status(client, job)
    print_fn(f"job {job}: {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


async def _stream(client, job: str, print_fn) -> None:
    async for chunk in client.tail_job_logs(job):
        print_fn(chunk.rstrip("\n"))


def _final_status(client, job: str, timeout_s: float = 60.0):
    """The job's status once terminal (the log stream can end a moment before the status is written)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job)
        if status.is_terminal() or time.monotonic() > deadline:
            return status
        time.sleep(0.5)
