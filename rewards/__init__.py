"""HOW a completion is checked: every checker returns a `Score` (finite float + `Status`).

    from answerkey.rewards import Score, Status, exact, status_counts
    from answerkey.rewards import math as math_reward          # math_reward.score(response, gold)
    from answerkey.rewards.code import run_tests               # run_tests(program, tests, entry_point)

  `score`          `Score`, `Status`, `status_counts`: the contract every checker returns.
  `exact`          a plain exact-number check (no processes, no timeout), for worlds whose answers
                   are plain numbers.
  `math/`          the sympy answer checker of the GSM8K and MATH envs (and of the synthetic one
                   with `checker="math"`): a fast path in the caller, sympy in killable workers.
  `code`           the unit-test reward: the pass fraction of a program run in `sandbox/`.
  `sandbox/`       the isolated, killed execution of untrusted programs behind `code`.
  `deadline_pool`  fresh worker processes, each item under a SIGKILL deadline (the math checker's
                   pool, and the RL loop's `RewardWorkers`).
Checkers own their process pools and per-item kills; nothing here imports torch or Ray.
"""

from answerkey.rewards import exact
from answerkey.rewards.score import Score, Status, status_counts

__all__ = ["Score", "Status", "exact", "status_counts"]
