"""The math reward: one final answer from a response, checked against a gold answer, never hanging.

    from answerkey.rewards import math as math_reward
    result = math_reward.score("... so the area is $\\\\boxed{12\\\\pi}$.", "12\\\\pi")
    float(result), result.status          # (1.0, Status.correct)
    math_reward.score_batch([(response, gold), ...], timeout_s=5.0)   # list[Score], same order
    math_reward.final_answer("... #### 0.5"), math_reward.exact_value("1,234")   # ('1/2', Fraction(1234, 1))

Pipeline (each stage in its own module of this package; imports go down the list, never up):
  `extract`  the last complete `\\boxed{}` / `\\fbox{}` / `\\boxed x`, else the last `#### x`,
             else the last "the (final) answer is … / Answer: …"; no fallback to stray numbers,
             an unclosed box or a hedge ("3 or 4") is no answer; only the tail of long text.
  `parse`    normalization (cosmetic only), exact rationals, choice letters, words, static guards.
  `check`    the decision: structure from the text, numbers exactly; returns None when sympy
             is needed (the fast path, run in the caller's process).
  `equiv`    sympy equivalence (latex2sympy2_extended parser), loaded and run only in pool workers.
The pool is `rewards/deadline_pool.py` (worker processes with a hard per-item wall-clock kill, no
signals); this checker owns one of its own (3 GiB RLIMIT_AS per worker).

Statuses: correct / wrong / no_answer / unparseable (an answer was found but cannot be read, or the
static guard refused it) / timeout (killed at the bound) / error (the gold cannot be read, or a
worker crashed). `float(score)` is the reward: 1.0 for correct, else 0.0.

Thread- and actor-safe: nothing here touches signals; the pool is created lazily, once per
process, and shared by all threads. Every item is bounded by `timeout_s` (default 5 s) of worker
time; an item that needs sympy waits for a free worker first (at most `workers` run at once).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from fractions import Fraction

from answerkey.rewards.deadline_pool import DeadlinePool
from answerkey.rewards.math.check import check
from answerkey.rewards.math.extract import extract
from answerkey.rewards.math.parse import normalize, rational
from answerkey.rewards.score import Score, Status

__all__ = ["DEFAULT_TIMEOUT_S", "MathChecker", "check", "exact_value", "final_answer", "score", "score_batch"]

DEFAULT_TIMEOUT_S = 5.0
_TARGET = "answerkey.rewards.math.check:check"  # called as check(response, gold, sympy_ok=True)
# Worker init: imports sympy and builds the parser's caches at worker start, off every item's clock.
_WARM_UP = "answerkey.rewards.math.equiv:warm_up"


class MathChecker:
    """The checker with its own pool: `MathChecker(workers=4).score_batch(pairs)`.

    Most users want the module-level `score` / `score_batch`, which share one lazily started pool.
    """

    def __init__(self, workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.timeout_s = timeout_s
        self._pool: DeadlinePool | None = None
        self._lock = threading.Lock()

    @property
    def pool(self) -> DeadlinePool:
        with self._lock:
            if self._pool is None:
                self._pool = DeadlinePool(_TARGET, workers=self.workers, init=_WARM_UP)
            return self._pool

    def score(self, response: str, gold: str, timeout_s: float | None = None) -> Score:
        return self.score_batch([(response, gold)], timeout_s)[0]

    def score_batch(self, pairs: Iterable[tuple[str, str]], timeout_s: float | None = None) -> list[Score]:
        """One `Score` per (response, gold), in order; fast-path items never touch the pool."""
        pairs = [_checked_pair(i, pair) for i, pair in enumerate(pairs)]
        scores: list[Score | None] = [_fast(response, gold) for response, gold in pairs]
        slow = [i for i, s in enumerate(scores) if s is None]
        if slow:
            bound = self.timeout_s if timeout_s is None else timeout_s
            outcomes = self.pool.map([(*pairs[i], True) for i in slow], timeout_s=bound)
            for i, (kind, value) in zip(slow, outcomes, strict=True):
                scores[i] = _from_outcome(kind, value, bound)
        return scores  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


def _checked_pair(index: int, pair: tuple[str, str]) -> tuple[str, str]:
    response, gold = pair
    if not isinstance(response, str) or not isinstance(gold, str):
        raise TypeError(f"item {index}: expected (response: str, gold: str), got "
                        f"({type(response).__name__}, {type(gold).__name__})")
    return response, gold


def _fast(response: str, gold: str) -> Score | None:
    """The in-process fast path; on any surprise, defer to a worker (where a crash is contained)."""
    try:
        return check(response, gold, sympy_ok=False)
    except Exception:  # noqa: BLE001 - a fast-path bug must not take the caller down; the worker reports it
        return None


def _from_outcome(kind: str, value, bound: float) -> Score:
    if kind == "ok" and isinstance(value, Score):
        return value
    if kind == "timeout":
        return Score.failed(Status.timeout, f"checker killed after {bound:g} s")
    return Score.failed(Status.error, str(value)[:300])


_default: MathChecker | None = None
_default_lock = threading.Lock()


def default_checker() -> MathChecker:
    """The process-wide checker behind `score` / `score_batch` (started on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathChecker()
        return _default


def score(response: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Score:
    """Reward for one response against one gold answer (see module docstring)."""
    return default_checker().score(response, gold, timeout_s)


def score_batch(pairs: Sequence[tuple[str, str]], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Score]:
    """Rewards for many (response, gold) pairs through the shared pool, in order."""
    return default_checker().score_batch(pairs, timeout_s)


def final_answer(response: str) -> str | None:
    """The final answer `response` commits to, spelled canonically; None when it commits to none.

    The same extraction and normalization as `score`, and a plain number as its exact rational, so
    `#### 0.5` and `\\boxed{\\frac{1}{2}}` both give "1/2" (e.g. to group samples by answer for maj@k).
    """
    answer = extract(response).answer
    if answer is None:
        return None
    answer = normalize(answer)
    number = rational(answer)
    return str(number) if number is not None else answer


def exact_value(answer: str) -> Fraction | None:
    """The exact rational a plain-number answer states (`1,234`, `0.5`, `\\frac{3}{4}`), else None."""
    return rational(normalize(answer))
