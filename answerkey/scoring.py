"""Reward scoring outside the trainer's process: env code runs in worker processes, each item under a kill.

    pool = ScorerPool("answerkey.envs.synthetic:SyntheticEnv", {"difficulty": 2}, processes=1, timeout_s=30)
    scores = pool.score(problems, completions)      # one Score per item, in the order given
    pool.close()

Each worker process builds its own env from the dotted path (so the env never has to be pickled)
and scores one item at a time with `envs.base.score_one`: an env whose `score` raises gives that
item `Status.error` naming the problem. An env with its own `score_batch` (the math and code
rewards keep their own pools with per-item bounds) gets one chunk per process instead. An item that runs past `timeout_s` has its process SIGKILLed
(a reward can hang in C code or ignore signals; no `signal.alarm`, no handlers) and scores
`Status.timeout`; a process that dies mid-item (segfault, OOM kill) gives `Status.error`; either
way a fresh process replaces it and the other items carry on. Results are placed by item index,
never by completion order.

Each process is a fresh interpreter (not a fork of the caller, not multiprocessing's spawn, which
re-imports the caller's `__main__`), so the pool works from scripts, threads and Ray actors alike. Checkers that own a
finer-grained pool of their own (sympy, the code sandbox) still run under this backstop.
Multi-turn envs score inside their own `rollout` (in the rollout worker), not here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from answerkey.envs.base import Env, Problem, load_env, score_batch, score_one
from answerkey.rewards import Score, Status

START_TIMEOUT_S = 120.0  # importing and constructing the env in a fresh process (data files, warm pools)


def _serve(fd: int) -> None:
    """Worker process: build the env, then score (index, problem, completion) items until told to stop."""
    conn = Connection(fd)
    env_path, env_kwargs = conn.recv()
    try:
        env = load_env(env_path, env_kwargs)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it with context
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", has_own_batch(env)))
    try:
        while (job := conn.recv()) is not None:
            problems, completions = job
            if len(problems) == 1:
                conn.send([score_one(env, problems[0], completions[0])])
            else:  # an env with its own batched checker (a sandbox or sympy pool)
                try:
                    scores = score_batch(env, problems, completions)
                except Exception:  # noqa: BLE001 - its score_batch failed: score item by item, naming the culprit
                    scores = [score_one(env, p, c) for p, c in zip(problems, completions, strict=True)]
                conn.send(scores)
    except (EOFError, BrokenPipeError):  # the parent died (e.g. a killed driver): exit quietly
        return


def has_own_batch(env) -> bool:
    """Whether the env scores batches itself (its own pool, own per-item bounds) rather than item by item."""
    method = getattr(type(env), "score_batch", None)
    return method is not None and method is not Env.score_batch


class _Worker:
    """One scoring process, started as a fresh interpreter (`python -c`): nothing of the parent's
    `__main__`, threads or Ray state is inherited; it sees the parent's `sys.path`."""

    def __init__(self, env_path: str, env_kwargs: Mapping[str, Any]):
        ours, theirs = socket.socketpair()
        code = "import sys; from answerkey.scoring import _serve; _serve(int(sys.argv[1]))"
        env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                        stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send((env_path, dict(env_kwargs)))
        self.job: tuple[list[int], float] | None = None  # (item indices, deadline) of the job in flight
        self.batched = False  # the env has its own score_batch (reported when ready)

    def wait_ready(self, env_path: str) -> None:
        if not self.conn.poll(START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"reward process for env {env_path!r} did not start within {START_TIMEOUT_S:.0f} s")
        try:
            status, detail = self.conn.recv()
        except EOFError:
            status, detail = "failed", f"the process exited with code {self.process.wait()}"
        self.batched = status == "ready" and bool(detail)
        if status != "ready":
            self.kill()
            raise RuntimeError(f"reward process could not build env {env_path!r}: {detail}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=10)
        self.conn.close()


class ScorerPool:
    def __init__(self, env_path: str, env_kwargs: Mapping[str, Any] | None = None, processes: int = 1,
                 timeout_s: float = 30.0):
        if processes < 1 or timeout_s <= 0:
            raise ValueError(f"ScorerPool needs processes >= 1 and timeout_s > 0, got {processes}, {timeout_s}")
        self.env_path, self.env_kwargs, self.timeout_s = env_path, dict(env_kwargs or {}), timeout_s
        self.workers = [self._start() for _ in range(processes)]
        self.restarts = 0  # processes replaced after a timeout or a crash, over the pool's life

    def _start(self) -> _Worker:
        worker = _Worker(self.env_path, self.env_kwargs)
        worker.wait_ready(self.env_path)
        return worker

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        """One `Score` per (problem, completion), placed by index.

        Item by item, each under `timeout_s`; an env with its own `score_batch` gets one contiguous chunk per
        process (its checker bounds each item; the chunk's backstop is `timeout_s` per item), and a chunk
        that overran or crashed is scored again item by item, so only the guilty item scores 0.
        """
        if len(problems) != len(completions):
            raise ValueError(f"ScorerPool.score: {len(problems)} problems but {len(completions)} completions")
        results: list[Score | None] = [None] * len(problems)
        single = [[i] for i in range(len(problems))]
        if self.workers[0].batched and len(problems) > 1:
            size = -(-len(problems) // len(self.workers))
            chunks = [list(range(i, min(i + size, len(problems)))) for i in range(0, len(problems), size)]
            single = [[i] for i in self._run(chunks, problems, completions, results)]
        self._run(single, problems, completions, results)
        return results  # type: ignore[return-value]  (every slot is filled)

    def _run(self, jobs: list[list[int]], problems, completions, results: list) -> list[int]:
        """Score `jobs` (lists of item indices) on the workers; returns the items of multi-item jobs that failed."""
        pending, retry = deque(jobs), []
        while pending or any(w.job for w in self.workers):
            for w in self.workers:
                if w.job is None and pending:
                    idx = pending.popleft()
                    w.conn.send(([problems[i] for i in idx], [completions[i] for i in idx]))
                    w.job = (idx, time.monotonic() + self.timeout_s * len(idx))
            busy = [w for w in self.workers if w.job]
            next_deadline = min(w.job[1] for w in busy)
            ready = set(wait([w.conn for w in busy], timeout=max(0.0, next_deadline - time.monotonic())))
            for n, w in enumerate(self.workers):
                if w.job is None:
                    continue
                idx = w.job[0]
                if w.conn in ready:
                    try:
                        for i, score in zip(idx, w.conn.recv(), strict=True):
                            results[i] = score
                        w.job = None
                        continue
                    except EOFError:
                        failed = Score.failed(Status.error, f"reward process died (exit {w.process.poll()}) "
                                                            f"scoring {problems[idx[0]].id}")
                elif time.monotonic() >= w.job[1]:
                    failed = Score.failed(Status.timeout, f"scoring {problems[idx[0]].id} took > {self.timeout_s:g} s")
                else:
                    continue
                if len(idx) == 1:
                    results[idx[0]] = failed
                else:
                    retry += idx
                w.kill()
                self.workers[n] = self._start()
                self.restarts += 1
        return retry

    def close(self) -> None:
        for w in self.workers:
            if w.alive():
                with contextlib.suppress(OSError):
                    w.conn.send(None)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.process.wait(timeout=5)
            w.kill()
        self.workers = []

    def __enter__(self) -> ScorerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
