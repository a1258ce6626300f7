"""The math reward inside a Ray actor (where `signal.alarm` checkers fail) gives the main thread's verdicts,
including the kill of an overrunning item."""

from __future__ import annotations

import ray

from answerkey.rewards import math as math_reward
from tests.math_adversarial import ADVERSARIAL
from tests.math_table import TABLE


def test_verdicts_from_a_ray_actor_match_the_main_thread(ray_session):
    rows = [(r, g) for r, g, _ in TABLE[::4]] + [(r, g) for r, g, _ in ADVERSARIAL[:3]]
    rows.append(("\\boxed{\\sum_{n=1}^{N} n^{n^{n}}}", "1"))  # passes the static guards; bounded by the kill

    @ray.remote(num_cpus=1)
    class Scorer:
        def score_batch(self, pairs, timeout_s):
            from answerkey.rewards import math as reward  # imported in the actor's own process

            return [s.status.value for s in reward.score_batch(pairs, timeout_s=timeout_s)]

        def score_each_in_threads(self, pairs):
            from concurrent.futures import ThreadPoolExecutor

            from answerkey.rewards import math as reward

            with ThreadPoolExecutor(max_workers=4) as executor:
                scores = executor.map(lambda p: reward.score(*p, timeout_s=2.0), pairs)
                return [s.status.value for s in scores]

    actor = Scorer.remote()
    main = [s.status.value for s in math_reward.score_batch(rows, timeout_s=2.0)]
    from_actor = ray.get(actor.score_batch.remote(rows, 2.0), timeout=300)
    from_actor_threads = ray.get(actor.score_each_in_threads.remote(rows), timeout=300)
    assert from_actor == main
    assert from_actor_threads == main
    assert "correct" in main and "wrong" in main
