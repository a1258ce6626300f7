"""Faults in a running driver: a tensor altered or dropped in transport, a worker killed mid-step, rewards
that raise or hang. One driver serves the module (starting actors is the slow part) and is closed at its
end, so the next module's drivers find the cluster's CPUs free."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import ray
import torch

from answerkey.handles import CallFailed, call, get
from answerkey.loop import SyncError
from tests.test_driver import make_driver


class TamperedTransport:
    """A worker handle whose weight updates are altered on their way (one tensor changed or dropped)."""

    def __init__(self, real, how: str):
        self.real, self.how = real, how

    def __getattr__(self, name):
        return getattr(self.real, name)

    @property
    def load_weights(self):
        def remote(weights_ref, version):
            pairs = [(name, np.array(a)) for name, a in ray.get(weights_ref)]
            if self.how == "alter":
                pairs[3][1].flat[0] += 1e-3
            else:
                del pairs[3]
            return self.real.load_weights.remote(pairs, version)

        return type("Method", (), {"remote": staticmethod(remote)})


@pytest.fixture(scope="module")
def driver(ray_session, policy_dir, tmp_path_factory):
    """One driver shared by the fault tests (starting actors is the slow part). Its env's reward code
    raises on one train problem and hangs on another; P = 8 = the whole train split, so every step hits
    both."""
    from answerkey.envs.synthetic import SyntheticEnv

    train = SyntheticEnv(difficulty=2, train_size=8, test_size=4).problems("train")
    env = ("--env.path=tests.faulty_env:FaultyEnv", "--env.reward_timeout_s=1.0",
           f'--env.kwargs={{difficulty = 2, train_size = 8, test_size = 4, raise_on = ["{train[0].id}"], '
           f'hang_on = ["{train[1].id}"]}}')
    driver = make_driver(policy_dir, tmp_path_factory.mktemp("runs"), "faults", "--run.steps=3", *env)
    yield driver
    driver.close()


@pytest.mark.parametrize("how", ["alter", "drop"])
def test_a_tensor_altered_or_dropped_in_transport_stops_the_run_naming_worker_and_parameter(driver, how):
    name = ray.get(driver.learner.named_arrays.remote())[3][0]
    real = driver.workers[1]
    driver.workers[1] = TamperedTransport(real, how)
    try:
        with pytest.raises(SyncError, match=rf"rollout worker 1 .*{name}"):
            driver.sync()
    finally:
        driver.workers[1] = real
    assert driver.sync()["sync/verified"] == 1.0  # the same workers pass once the transport is intact


def test_rewards_that_raise_or_hang_score_zero_and_are_counted(driver):
    metrics = driver.train_step()
    assert metrics["reward/status/error"] == 4 and metrics["reward/status/timeout"] == 4  # G = 4 of each
    assert metrics["reward/scorer_restarts"] >= 4 and metrics["sync/verified"] == 1.0


def test_a_rollout_worker_killed_mid_step_is_restarted_and_the_step_completes(driver):
    killed = threading.Event()

    def kill_worker_0_during_rollout():
        while driver.phase != "rollout":
            time.sleep(0.001)
        ray.kill(driver.workers[0], no_restart=True)
        killed.set()

    driver.phase = "setup"
    killer = threading.Thread(target=kill_worker_0_during_rollout)
    killer.start()
    metrics = driver.train_step()
    killer.join()
    assert killed.is_set()
    assert metrics["rollout/worker_restarts"] == 1 and metrics["sync/verified"] == 1.0
    assert sum(v for k, v in metrics.items() if k.startswith("reward/status/")) == 8 * 4
    assert ray.get(driver.workers[0].pid.remote()) > 0  # the replacement answers


def test_a_method_that_raises_in_a_worker_actor_surfaces_as_call_failed_naming_it(driver):
    with pytest.raises(CallFailed, match=r"RolloutWorker\.set_rng_state raised RuntimeError") as info:
        get(call(driver.workers[0], "set_rng_state", torch.zeros(3, dtype=torch.uint8)))
    assert isinstance(info.value.cause, RuntimeError)
    assert ray.get(driver.workers[0].pid.remote()) > 0  # the actor lives on
