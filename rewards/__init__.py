"""HOW a completion is checked: every checker returns a `Score` (finite float + `Status`).

Checkers live one per module (`math`, `code`, reward model) and own their process pool and per-item
kill; nothing here imports torch.distributed or Ray. `exact` is the plain exact-number check that
the built-in GSM8K/MATH envs use until the sympy checker lands.
"""

from answerkey.rewards import exact  # noqa: E402  (after Score: exact imports it)
from answerkey.rewards.score import Score, Status, status_counts

__all__ = ["Score", "Status", "exact", "status_counts"]
