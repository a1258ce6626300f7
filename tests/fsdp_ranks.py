"""One rank of an FSDP2 learner group for tests/test_fsdp.py, run as a plain process (no Ray):

    python -m tests.fsdp_ranks JOB RANK WORLD PORT OUT POLICY BACKEND     # `run_ranks` starts WORLD of them

The ranks rendezvous on the test's TCPStore at 127.0.0.1:PORT (gloo on CPU, nccl on GPUs: tests/gpu).
Inputs (pickled trajectory groups, configs) are read from OUT; rank 0 writes what it measured there (full
gradients, parameters, metrics, logits) for the test to compare with one process. Jobs:

- `grads`:   for each config in OUT/grads_cases.pt: one `step` on the same groups; gradients, parameters
             and metrics. Then rank 1 alone gets malformed groups: rank 0's error must name rank 1's.
- `resume`:  4 steps with a DCP checkpoint after step 2 (and the logits there); then a fresh learner in the
             same group resumes from it and redoes steps 3 and 4.
- `crash`:   checkpoints back to back until the test SIGKILLs the ranks mid-write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from answerkey.config import LearnerConfig
from answerkey.learner.fsdp import ShardedLearner
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.transfer import GroupSpec

ROOT = Path(__file__).resolve().parents[1]
SAMPLING = SamplingParams(max_new_tokens=16, temperature=0.9)
PROBE_IDS = torch.arange(3, 40).reshape(1, -1)  # a fixed input for the logits check


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def snapshot(learner: ShardedLearner) -> dict:
    """Full gradients, parameters and AdamW second moments (collective: every rank calls it)."""
    model, opt = learner.model, learner.learner.optimizer
    out = {"grads": {}, "params": {}, "exp_avg_sq": {}}
    for name, p in model.named_parameters():
        out["params"][name] = full(p)
        if p.grad is not None:
            out["grads"][name] = full(p.grad)
        if p in opt.state:
            out["exp_avg_sq"][name] = full(opt.state[p]["exp_avg_sq"])
    return out


def make(policy: str, cfg: dict, rank: int, spec: GroupSpec, dtype=torch.float32,
         total_steps: int = 10) -> ShardedLearner:
    return ShardedLearner(policy, LearnerConfig(**cfg), SAMPLING, total_steps, rank, spec, threads=1,
                          dtype=dtype)


def job_grads(rank: int, spec: GroupSpec, out: Path, policy: str) -> None:
    cases = torch.load(out / "grads_cases.pt", weights_only=False)
    results = {}
    for name, case in cases["cases"].items():
        learner = make(policy, case["cfg"], rank, spec, dtype=case["dtype"])
        metrics = learner.step(cases["groups"])
        results[name] = snapshot(learner) | {"metrics": metrics}
    if rank == 0:
        torch.save(results, out / "grads_results.pt")
    if spec.backend == "nccl" or spec.world_size < 2:
        # NCCL: a peer's abort does not reach a rank waiting in a collective (it waits for the timeout)
        return
    # rank 1 alone gets groups of unequal size: make_batch raises there, rank 0 waits in a collective
    learner = make(policy, {"lr": 1e-3}, rank, spec, dtype=torch.float64)
    groups = cases["groups"] if rank == 0 else [cases["groups"][0], cases["groups"][1][:2]]
    try:
        learner.step(groups)
        message = "no error"
    except RuntimeError as exc:
        message = str(exc)
    (out / f"failure_rank{rank}.txt").write_text(message)


def job_resume(rank: int, spec: GroupSpec, out: Path, policy: str) -> None:
    data = torch.load(out / "resume_inputs.pt", weights_only=False)
    cfg, steps = data["cfg"], data["groups"]  # steps: 4 lists of groups
    root = out / "checkpoints"
    first = make(policy, cfg, rank, spec, total_steps=4)
    metrics = [first.step(steps[0]), first.step(steps[1])]
    first.logprobs_of([5, 6, 7], [8, 9])  # what a sync does between a step and a save (no backward)
    first.named_arrays(), first.weights_checksum()
    path = first.save_checkpoint(str(root), 2, {"sampler_position": 16}, '{"run": "test"}', keep=2)
    with torch.no_grad():
        logits = first.model(input_ids=PROBE_IDS.to(first.device)).logits.cpu()
    metrics += [first.step(steps[2]), first.step(steps[3])]
    straight = snapshot(first) | {"metrics": metrics, "logits_at_2": logits, "path": path}
    second = make(policy, cfg, rank, spec, total_steps=4)
    second.resume(path)
    resumed = {"optimizer_steps": second.learner.optimizer_steps,
               "lr": second.learner.scheduler.get_last_lr()[0]}
    metrics = [second.step(steps[2]), second.step(steps[3])]
    resumed |= snapshot(second) | {"metrics": metrics}
    if rank == 0:
        torch.save({"straight": straight, "resumed": resumed}, out / "resume_results.pt")


def job_crash(rank: int, spec: GroupSpec, out: Path, policy: str) -> None:
    learner = make(policy, {"lr": 1e-3}, rank, spec)
    step = 0
    while True:  # until the test kills us
        step += 1
        learner.save_checkpoint(str(out / "checkpoints"), step, {"sampler_position": step}, "{}", keep=2)
        if rank == 0:
            (out / "saved.txt").write_text(str(step))


def run_ranks(job: str, out: Path, policy: Path, world: int = 2, backend: str = "gloo",
              timeout_s: float = 400, until=None) -> None:
    """Run `job` on `world` rank processes; with `until`, SIGKILL them all once `until()` is true."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, world + 1, is_master=True, wait_for_workers=False)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    logs = [open(out / f"rank{r}.log", "w") for r in range(world)]  # noqa: SIM115
    commands = [[sys.executable, "-m", "tests.fsdp_ranks", job, str(r), str(world), str(store.port), str(out),
                 str(policy), backend] for r in range(world)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[r], stderr=subprocess.STDOUT)
             for r, cmd in enumerate(commands)]
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if until is not None and until():
                for p in procs:
                    p.send_signal(signal.SIGKILL)
                break
            if time.monotonic() > deadline or any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for f in logs:
            f.close()
    if until is None:
        for r, p in enumerate(procs):
            log = (out / f"rank{r}.log").read_text()[-4000:]
            assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{log}"


JOBS = {"grads": job_grads, "resume": job_resume, "crash": job_crash}


if __name__ == "__main__":
    job, rank, world, port, out, policy, backend = sys.argv[1:8]
    torch.set_num_threads(1)
    JOBS[job](int(rank), GroupSpec("127.0.0.1", int(port), int(world), backend, 120.0), Path(out), policy)
