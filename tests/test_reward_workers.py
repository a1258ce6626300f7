"""RewardWorkers: env code runs outside the caller, each item under a kill, results by index."""

from __future__ import annotations

import os

import pytest

from answerkey.envs.synthetic import SyntheticEnv
from answerkey.reward_workers import RewardWorkers
from answerkey.rewards import Status

pytestmark = pytest.mark.slow  # reward worker processes: make check leaves it out

ENV = "tests.faulty_env:FaultyEnv"


@pytest.fixture(scope="module")
def problems():
    return list(SyntheticEnv(difficulty=1, train_size=6, test_size=2).problems("train"))


# ENV scores item by item; BatchedFaultyEnv in chunks, then item by item
@pytest.mark.parametrize("env", [ENV, "tests.faulty_env:BatchedFaultyEnv"])
def test_raise_hang_and_crash_are_scored_zero_by_status_and_the_rest_by_index(problems, env):
    bad = {"raise_on": [problems[1].id], "hang_on": [problems[3].id], "crash_on": [problems[4].id]}
    kwargs = {"difficulty": 1, "train_size": 6, "test_size": 2} | bad
    completions = [p.meta["solution"] for p in problems]
    with RewardWorkers(env, kwargs, processes=2, timeout_s=1.5) as pool:
        assert pool.batched is (env != ENV)
        scores = pool.score(problems, completions)
        statuses = [s.status for s in scores]
        assert statuses == [Status.correct, Status.error, Status.correct, Status.timeout, Status.error,
                            Status.correct]
        assert all(float(s) == 0.0 for s in scores if s.status != Status.correct)
        assert "ZeroDivisionError" in scores[1].detail and problems[1].id in scores[1].detail
        assert problems[3].id in scores[3].detail and "died" in scores[4].detail
        assert pool.restarts == (2 if env == ENV else 3)  # hung and crashed processes replaced (+1 chunk)...
        # ...and the pool still works
        again = pool.score(problems[:1] * 3, ["#### 0", completions[0], "no answer"])
        assert [s.status for s in again] == [Status.wrong, Status.correct, Status.no_answer]
        pids = pool.pids()
        assert len(pids) == 2
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids), "close() left a scoring process running"


def test_an_env_that_cannot_be_built_is_reported_with_its_path():
    with pytest.raises(RuntimeError, match="could not build env 'tests.faulty_env:FaultyEnv'.*difficulty"):
        RewardWorkers(ENV, {"difficulty": "hard"})


def test_an_allocation_past_the_memory_limit_is_that_items_error_and_the_process_lives_on(problems):
    kwargs = {"difficulty": 1, "train_size": 6, "test_size": 2, "hog_on": [problems[0].id]}
    completions = [p.meta["solution"] for p in problems[:3]]
    with RewardWorkers(ENV, kwargs, processes=1, timeout_s=30, memory_gb=1) as pool:
        scores = pool.score(problems[:3], completions)
        assert [s.status for s in scores] == [Status.error, Status.correct, Status.correct]
        assert "MemoryError" in scores[0].detail and problems[0].id in scores[0].detail
        assert pool.restarts == 0  # the limit made the allocation fail; nothing had to be killed


def test_bad_pool_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="memory_gb >= 0"):
        RewardWorkers(ENV, {}, memory_gb=-1)
