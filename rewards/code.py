"""The code reward: run a model-written program against unit tests in the sandbox; the pass fraction.

    from answerkey.rewards.code import run_tests, run_tests_batch, Job
    score = run_tests(program, tests, entry_point="add", timeout_s=5.0)   # HumanEval-shaped
    float(score), score.status            # 0.75, Status.partial  (3 of 4 asserts passed)
    scores = run_tests_batch([Job(program, tests, "add"), ...])          # parallel over the pool

`program` defines `entry_point`; `tests` defines `check(candidate)` (HumanEval) or has top-level
asserts that call the entry point by name (MBPP). The value is the fraction of asserts passed, each
top-level assert statement of `check` counted once (see `sandbox/judge.py`). Status: `correct` (every
assert), `partial`, `wrong` (none, or the program raised / exited / lacked the entry point before
its tests: 0), `unparseable` (a SyntaxError), `timeout` (past `timeout_s`, killed: 0), `error` (the
sandbox or the tests themselves failed: 0, and not the model's fault).

Execution is in `sandbox.Sandbox` (namespaces, cgroups, uid drop, a judge process the program cannot
reach). This module keeps one pool per process, made on first use with `configure()`'s settings
(default: one worker per CPU, strict isolation); `configure(allow_weaker=True)` is the explicit
opt-in for machines without it. It does not extract code from chat completions: `extract_code` does.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence

from answerkey.rewards.sandbox import Job, Limits, Outcome, Sandbox, SandboxUnavailable
from answerkey.rewards.score import Score, Status

__all__ = ["Job", "Limits", "Sandbox", "SandboxUnavailable", "configure", "extract_code", "run_tests",
           "run_tests_batch", "to_score"]

_lock = threading.Lock()
_pool: Sandbox | None = None
_settings: dict = {}


def configure(workers: int | None = None, limits: Limits | None = None, allow_weaker: bool = False) -> None:
    """Settings of the process-wide pool (closes the current one; the next call makes a new one)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.close()
            _pool = None
        _settings.clear()
        _settings.update(workers=workers, limits=limits or Limits(), allow_weaker=allow_weaker)


def sandbox() -> Sandbox:
    """The process-wide pool, started (and self-checked) on first use."""
    global _pool
    with _lock:
        if _pool is None:
            workers = _settings.get("workers") or len(os.sched_getaffinity(0))
            _pool = Sandbox(workers=workers, limits=_settings.get("limits", Limits()),
                            allow_weaker=_settings.get("allow_weaker", False))
        return _pool


def run_tests(program: str, tests: str, entry_point: str, timeout_s: float = 5.0, prelude: str = "") -> Score:
    """Run `program` against `tests` in the sandbox; the pass fraction as a `Score`."""
    return run_tests_batch([Job(program, tests, entry_point, timeout_s, prelude)])[0]


def run_tests_batch(jobs: Sequence[Job], box: Sandbox | None = None) -> list[Score]:
    """One `Score` per job, executed in parallel over the pool (`box`, or the process-wide one)."""
    for i, job in enumerate(jobs):
        if not isinstance(job, Job):
            raise TypeError(f"run_tests_batch: item {i} is a {type(job).__name__}, "
                            f"expected answerkey.rewards.code.Job")
        if not job.timeout_s > 0:
            raise ValueError(f"run_tests_batch: item {i} ({job.entry_point}) has timeout_s={job.timeout_s}, "
                             f"must be > 0")
    return [to_score(o) for o in (box or sandbox()).run(jobs)]


def to_score(outcome: Outcome) -> Score:
    """Map an execution's `Outcome` onto the reward contract."""
    load, detail = outcome.load, outcome.detail
    if load == "ok":
        if not outcome.units:
            return Score.failed(Status.error, "the tests contain no assert that involves the candidate")
        passed, total = sum(outcome.units), len(outcome.units)
        status = Status.correct if passed == total else Status.partial if passed else Status.wrong
        summary = f"{passed}/{total} asserts passed" + (f"; {detail}" if detail else "")
        return Score(passed / total, status, summary)
    if load == "syntax":
        return Score.failed(Status.unparseable, detail)
    if load == "timeout":
        return Score.failed(Status.timeout, detail)
    if load in ("infra", "judge_error"):
        return Score.failed(Status.error, f"{load}: {detail}")
    return Score.failed(Status.wrong, f"program failed before its tests ({load}): {detail}")


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(completion: str) -> str:
    """The code in a completion: its fenced blocks (```python ... ```) joined, else the whole text."""
    blocks = [b for b in _FENCE.findall(completion) if b.strip()]
    return "\n\n".join(blocks) if blocks else completion
