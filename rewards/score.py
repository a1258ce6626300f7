"""The one reward contract: every checker returns a `Score`, a finite float plus a `Status`.

    >>> s = Score(1.0, Status.correct)
    >>> float(s), s.status.value
    (1.0, 'correct')
    >>> float(Score.failed(Status.timeout, "sympy took > 5 s"))
    0.0

A reward is always a finite float: a NaN or infinite value raises at construction, so a broken
checker cannot poison the advantages. Anything that is not `correct` is counted by status in the
step metrics (`reward/status/<name>`), so a checker that crashes or times out on every item shows up
as a wall of `error`/`timeout`, never as a silent 0. This module has no torch and no Ray in it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """What a checker concluded about one completion. Every checker maps onto these."""

    correct = "correct"  # the answer matches (for partial credit: every test passed)
    partial = "partial"  # some but not all unit tests passed (the value is the pass fraction)
    wrong = "wrong"  # an answer was found and parsed, and it does not match
    no_answer = "no_answer"  # no final answer in the expected format (no box, no ####)
    unparseable = "unparseable"  # an answer was found but could not be parsed
    timeout = "timeout"  # the checker ran past its wall-clock bound and was killed
    error = "error"  # the checker (or the env's score code) raised


@dataclass(frozen=True, slots=True)
class Score:
    """A reward value with the status that produced it; `float(score)` is the reward."""

    value: float
    status: Status
    detail: str = ""  # human-readable reason, e.g. the extracted answer or the exception

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            raise TypeError(f"Score.status must be a Status, got {self.status!r}")
        value = float(self.value)  # also rejects None and strings with a clear TypeError/ValueError
        if not math.isfinite(value):
            raise ValueError(f"a reward must be a finite float, got {self.value!r} ({self.status.value})")
        object.__setattr__(self, "value", value)

    def __float__(self) -> float:
        return self.value

    @classmethod
    def failed(cls, status: Status, detail: str = "") -> Score:
        """A zero reward for a completion that could not be credited (timeout, error, no answer…)."""
        return cls(0.0, status, detail)


def status_counts(scores: Iterable[Score]) -> dict[str, int]:
    """`{"reward/status/<status>": count}` for every status, zeros included (stable dashboard keys)."""
    counts = Counter(score.status for score in scores)
    return {f"reward/status/{status.value}": counts.get(status, 0) for status in Status}
