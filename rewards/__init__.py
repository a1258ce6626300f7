"""HOW a completion is checked: every checker returns a `Score` (finite float + `Status`).

Checkers live one per module (`math`, `code`, reward model) and own their process pool and per-item
kill; nothing here imports torch.distributed or Ray. `math` (`from answerkey.rewards import math as
math_reward`) is the sympy answer checker the GSM8K and MATH envs use; `exact` is the plain
exact-number check the synthetic world keeps (its verdicts, and so the demo's numbers, stay
bit-identical, and the demo never starts sympy worker processes).
"""

from answerkey.rewards import exact  # noqa: E402  (after Score: exact imports it)
from answerkey.rewards.score import Score, Status, status_counts

__all__ = ["Score", "Status", "exact", "status_counts"]
