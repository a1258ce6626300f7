"""An env's reward code in separate killable processes: scoring outside the trainer's process.

    workers = RewardWorkers("answerkey.envs.synthetic:SyntheticEnv", {"difficulty": 2}, processes=1,
                            timeout_s=30)
    scores = workers.score(problems, completions)   # one Score per item, in the order given
    workers.close()

The RL loop's whole-batch backstop over env code, on `rewards/deadline_pool.py` (`DeadlinePool`:
fresh `python -c` interpreters, SIGKILL at the deadline, replacement, an address-space limit, a
close that leaves no process). Each worker builds its own env from the dotted path (so the
env never has to be pickled, and is never built in the caller) and scores one item at a time with
`envs.base.score_one`: an env whose `score` raises gives that item `Status.error` naming the problem.
An env with its own `score_batch` (the math and code rewards keep their own pools with per-item
bounds) gets one chunk per process instead. An item that runs past `timeout_s` has its process
SIGKILLed (a reward can hang in C code or ignore signals; no `signal.alarm`, no handlers) and scores
`Status.timeout`; a process that dies mid-item (segfault, OOM kill) gives `Status.error`; an
allocation past `memory_gb` raises MemoryError, which is that item's `Status.error`. Either way the
other items carry on, and a fresh process replaces a killed or dead one. Results are placed by item
index, never by completion order. Multi-turn envs score inside their own `rollout` (in the rollout
worker), not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from answerkey.config import EnvConfig
from answerkey.envs.base import Env, Problem, load_env, score_batch, score_one
from answerkey.rewards import Score, Status
from answerkey.rewards.deadline_pool import DeadlinePool

_env: Env | None = None  # the env of this reward process: built by `_build` in a worker, never in the caller


def _build(env_path: str, env_kwargs: dict[str, Any]) -> bool:
    """Worker init: build the env; tells the parent whether it scores batches itself."""
    global _env
    _env = load_env(env_path, env_kwargs)
    return has_own_batch(_env)


def _score(problems: list[Problem], completions: list[str]) -> list[Score]:
    """Worker target: one item through `score_one`, a chunk through the env's own `score_batch`."""
    if len(problems) == 1:
        return [score_one(_env, problems[0], completions[0])]
    try:
        return score_batch(_env, problems, completions)
    except Exception:  # noqa: BLE001 - its score_batch failed: score item by item, naming the culprit
        return [score_one(_env, p, c) for p, c in zip(problems, completions, strict=True)]


def has_own_batch(env) -> bool:
    """Whether the env scores batches itself (its own pool, own per-item bounds) rather than item by item."""
    method = getattr(type(env), "score_batch", None)
    return method is not None and method is not Env.score_batch


class RewardWorkers:
    """`processes` reward processes, each with its own env built from `env_path` (module docstring)."""

    def __init__(self, env_path: str, env_kwargs: Mapping[str, Any] | None = None, processes: int = 1,
                 timeout_s: float = 30.0, memory_gb: float = 8.0):
        if processes < 1 or timeout_s <= 0 or memory_gb < 0:
            raise ValueError(f"RewardWorkers needs processes >= 1, timeout_s > 0 and memory_gb >= 0, "
                             f"got {processes}, {timeout_s}, {memory_gb}")
        self.env_path, self.timeout_s = env_path, timeout_s
        self.pool = DeadlinePool("answerkey.reward_workers:_score", workers=processes,
                                 init="answerkey.reward_workers:_build",
                                 init_args=(env_path, dict(env_kwargs or {})),
                                 memory_limit_bytes=int(memory_gb * 1024**3) or None)
        try:
            self.batched = bool(self.pool.start())  # the env has its own score_batch
        except RuntimeError as exc:
            raise RuntimeError(f"reward process could not build env {env_path!r}: {exc}") from exc

    @classmethod
    def for_env(cls, cfg: EnvConfig) -> RewardWorkers:
        """The reward workers of an `[env]` config section (path, kwargs and its reward_* bounds)."""
        return cls(cfg.path, cfg.kwargs, cfg.reward_processes, cfg.reward_timeout_s, cfg.reward_memory_gb)

    @property
    def restarts(self) -> int:
        """Processes replaced after a timeout or a crash, over the pool's life."""
        return self.pool.restarts

    def pids(self) -> list[int]:
        return self.pool.pids()

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        """One `Score` per (problem, completion), placed by index.

        Item by item, each under `timeout_s`; an env with its own `score_batch` gets one contiguous chunk per
        process (its checker bounds each item; the chunk's backstop is `timeout_s` per item), and a chunk
        that overran or crashed is scored again item by item, so only the guilty item scores 0.
        """
        if len(problems) != len(completions):
            raise ValueError(f"RewardWorkers.score: {len(problems)} problems but "
                             f"{len(completions)} completions")
        results: list[Score | None] = [None] * len(problems)
        single = [[i] for i in range(len(problems))]
        if self.batched and len(problems) > 1:
            size = -(-len(problems) // self.pool.size)
            chunks = [list(range(i, min(i + size, len(problems)))) for i in range(0, len(problems), size)]
            single = [[i] for i in self._run(chunks, problems, completions, results)]
        self._run(single, problems, completions, results)
        return results  # type: ignore[return-value]  (every slot is filled)

    def _run(self, jobs: list[list[int]], problems, completions, results: list) -> list[int]:
        """Score `jobs` (lists of item indices) on the pool; returns the items of multi-item jobs that
        failed."""
        items = [([problems[i] for i in idx], [completions[i] for i in idx]) for idx in jobs]
        outcomes = self.pool.map(items, timeout_s=[self.timeout_s * len(idx) for idx in jobs])
        retry = []
        for idx, (kind, value) in zip(jobs, outcomes, strict=True):
            if kind == "ok":
                for i, score in zip(idx, value, strict=True):
                    results[i] = score
            elif len(idx) > 1:
                retry += idx
            elif kind == "timeout":
                results[idx[0]] = Score.failed(Status.timeout,
                                               f"scoring {problems[idx[0]].id} took > {self.timeout_s:g} s")
            else:
                results[idx[0]] = Score.failed(Status.error,
                                               f"reward process: {value}, scoring {problems[idx[0]].id}")
        return retry

    def close(self) -> None:
        """Stop every reward process (the env's own pools shut down with it); none is left running."""
        self.pool.close()

    def __enter__(self) -> RewardWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
