"""Envs with broken reward code, for the driver's and RewardWorkers' fault tests (loaded by dotted path)."""

from __future__ import annotations

import os
import time

from answerkey.envs.synthetic import SyntheticEnv


class FaultyEnv(SyntheticEnv):
    """The synthetic world, except that scoring the listed problems raises, hangs, kills the process, or
    allocates 2 GiB at once (past a reward process's memory limit: MemoryError)."""

    def __init__(self, raise_on: tuple[str, ...] = (), hang_on: tuple[str, ...] = (),
                 crash_on: tuple[str, ...] = (), hog_on: tuple[str, ...] = (), **kwargs):
        super().__init__(**kwargs)
        self.raise_on, self.hang_on, self.crash_on = set(raise_on), set(hang_on), set(crash_on)
        self.hog_on = set(hog_on)

    def score(self, problem, completion):
        if problem.id in self.raise_on:
            raise ZeroDivisionError("the reward code divided by zero")
        if problem.id in self.hang_on:
            while True:  # a reward stuck in a loop that ignores everything but SIGKILL
                time.sleep(0.01)
        if problem.id in self.crash_on:
            os._exit(3)
        if problem.id in self.hog_on:
            return len(b"x" * (2 << 30))  # never returns under a 1 GiB limit
        return super().score(problem, completion)


class BatchedFaultyEnv(FaultyEnv):
    """The same faults behind an env-level `score_batch` (as the math and code envs have): scored in
    chunks."""

    def score_batch(self, problems, completions):
        return [self.score(p, c) for p, c in zip(problems, completions, strict=True)]
