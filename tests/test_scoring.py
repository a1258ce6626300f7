"""The reward process pool: env code runs outside the caller, each item under a kill, results by index."""

from __future__ import annotations

import os

import pytest

from answerkey.envs.synthetic import SyntheticEnv
from answerkey.rewards import Status
from answerkey.scoring import ScorerPool

ENV = "tests.faulty_env:FaultyEnv"


@pytest.fixture(scope="module")
def problems():
    return list(SyntheticEnv(difficulty=1, train_size=6, test_size=2).problems("train"))


@pytest.mark.parametrize("env", [ENV, "tests.faulty_env:BatchedFaultyEnv"])  # item by item; in chunks, then item by item
def test_raise_hang_and_crash_are_scored_zero_by_status_and_the_rest_by_index(problems, env):
    bad = {"raise_on": [problems[1].id], "hang_on": [problems[3].id], "crash_on": [problems[4].id]}
    kwargs = {"difficulty": 1, "train_size": 6, "test_size": 2} | bad
    completions = [p.meta["solution"] for p in problems]
    with ScorerPool(env, kwargs, processes=2, timeout_s=1.5) as pool:
        assert pool.workers[0].batched is (env != ENV)
        scores = pool.score(problems, completions)
        statuses = [s.status for s in scores]
        assert statuses == [Status.correct, Status.error, Status.correct, Status.timeout, Status.error, Status.correct]
        assert all(float(s) == 0.0 for s in scores if s.status != Status.correct)
        assert "ZeroDivisionError" in scores[1].detail and problems[1].id in scores[1].detail
        assert problems[3].id in scores[3].detail and "died" in scores[4].detail
        assert pool.restarts == (2 if env == ENV else 3)  # hung and crashed processes replaced (+1 chunk)...
        again = pool.score(problems[:1] * 3, ["#### 0", completions[0], "no answer"])  # ...and the pool still works
        assert [s.status for s in again] == [Status.wrong, Status.correct, Status.no_answer]
        pids = [w.process.pid for w in pool.workers]
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids), "close() left a scoring process running"


def test_an_env_that_cannot_be_built_is_reported_with_its_path():
    with pytest.raises(RuntimeError, match="could not build env 'tests.faulty_env:FaultyEnv'.*difficulty"):
        ScorerPool(ENV, {"difficulty": "hard"})
