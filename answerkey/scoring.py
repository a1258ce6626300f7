"""Reward scoring outside the trainer's process: env code runs in worker processes, each item under a kill.

    pool = ScorerPool("answerkey.envs.synthetic:SyntheticEnv", {"difficulty": 2}, processes=1, timeout_s=30)
    scores = pool.score(problems, completions)      # one Score per item, in the order given
    pool.close()

Each worker process builds its own env from the dotted path (so the env never has to be pickled)
and scores one item at a time with `envs.base.score_one`: an env whose `score` raises gives that
item `Status.error` naming the problem. An item that runs past `timeout_s` has its process SIGKILLed
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

from answerkey.envs.base import Problem, load_env, score_one
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
    conn.send(("ready", None))
    try:
        while (item := conn.recv()) is not None:
            index, problem, completion = item
            conn.send((index, score_one(env, problem, completion)))
    except (EOFError, BrokenPipeError):  # the parent died (e.g. a killed driver): exit quietly
        return


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
        self.item: tuple[int, float] | None = None  # (index, deadline) of the item in flight

    def wait_ready(self, env_path: str) -> None:
        if not self.conn.poll(START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"reward process for env {env_path!r} did not start within {START_TIMEOUT_S:.0f} s")
        try:
            status, detail = self.conn.recv()
        except EOFError:
            status, detail = "failed", f"the process exited with code {self.process.wait()}"
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
        """One `Score` per (problem, completion), each scored under `timeout_s`."""
        if len(problems) != len(completions):
            raise ValueError(f"ScorerPool.score: {len(problems)} problems but {len(completions)} completions")
        results: list[Score | None] = [None] * len(problems)
        pending = deque(range(len(problems)))
        while pending or any(w.item for w in self.workers):
            for w in self.workers:
                if w.item is None and pending:
                    index = pending.popleft()
                    w.conn.send((index, problems[index], completions[index]))
                    w.item = (index, time.monotonic() + self.timeout_s)
            busy = [w for w in self.workers if w.item]
            next_deadline = min(w.item[1] for w in busy)
            ready = set(wait([w.conn for w in busy], timeout=max(0.0, next_deadline - time.monotonic())))
            for i, w in enumerate(self.workers):
                if w.item is None:
                    continue
                index = w.item[0]
                if w.conn in ready:
                    try:
                        got, score = w.conn.recv()
                        assert got == index, f"scorer returned item {got} while {index} was in flight"
                        results[index], w.item = score, None
                        continue
                    except EOFError:
                        failed = Score.failed(Status.error, f"reward process died (exit {w.process.poll()}) "
                                                            f"scoring {problems[index].id}")
                elif time.monotonic() >= w.item[1]:
                    failed = Score.failed(Status.timeout, f"scoring {problems[index].id} took > {self.timeout_s:g} s")
                else:
                    continue
                results[index] = failed
                w.kill()
                self.workers[i] = self._start()
                self.restarts += 1
        return results  # type: ignore[return-value]  (every slot is filled above)

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
