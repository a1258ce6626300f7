"""The RL loop on plain objects in one process (`answerkey.local`). The loop on Ray actors is
tests/test_driver.py; that GRPO learns through this loop is tests/test_learning.py; the calls that make the
loop Ray-agnostic are tests/test_handles.py."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from answerkey import local
from answerkey.config import load_config
from answerkey.loop import SyncError

pytestmark = pytest.mark.slow  # RL steps in one process: make check leaves it out


@pytest.fixture
def loop(policy_dir):
    cfg = load_config("examples/tiny_cpu.toml", [
        f"--model.path={policy_dir}", "--rollout.problems_per_step=4", "--rollout.group_size=4",
        "--rollout.workers=2", "--run.steps=2"])
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    loop = local.start(cfg, model, AutoTokenizer.from_pretrained(policy_dir))
    yield loop
    loop.close()


def test_the_loop_in_one_process_trains_syncs_and_verifies_every_worker(loop):
    initial = {n: p.detach().clone() for n, p in loop.learner.model.named_parameters()}
    while loop.step < 2:
        metrics = loop.train_step()
        assert metrics["sync/verified"] == 1.0 and metrics["sync/version"] == loop.step
        assert sum(v for k, v in metrics.items() if k.startswith("reward/status/")) == 4 * 4
    held = [w.engine.weights_checksum() for w in loop.workers]
    assert held[0] == held[1] == loop.learner.weights_checksum()
    assert any(not torch.equal(initial[n], p) for n, p in loop.learner.model.named_parameters())
    # each worker holds its own copy
    assert all(w.engine.model is not loop.learner.model for w in loop.workers)
    evaluation = loop.evaluate(loop.train[:4], samples=2)
    assert 0 <= evaluation["eval/pass@1"] <= 1 and 0 <= evaluation["eval/greedy_reward"] <= 1


def test_a_worker_that_rejects_an_update_stops_the_sync_naming_it(loop):
    worker = loop.workers[1]
    real = worker.load_weights
    worker.load_weights = lambda arrays, version: real([(n, np.zeros(3)) if i == 0 else (n, a)
                                                       for i, (n, a) in enumerate(arrays)], version)
    with pytest.raises(SyncError, match=r"rollout worker 1 rejected the update: .*shape"):
        loop.sync()


def test_an_engine_sampling_from_another_distribution_fails_the_logprob_check(loop):
    """Right weights, wrong sampling: the checksums pass, the check completion's logprobs do not."""
    worker = loop.workers[0]
    real = worker.probe
    worker.probe = lambda prompt, sampling: real(prompt, replace(sampling, temperature=0.7))
    with pytest.raises(SyncError, match=r"rollout worker 0's logprobs of its check completion differ from "
                                        r"the learner's by [0-9.e+-]+ \(tolerance 0.0001, fp32\)"):
        loop.sync()
    worker.probe = real
    assert loop.sync()["sync/verified"] == 1.0


@pytest.mark.parametrize("top", [{"top_k": 20}, {"top_p": 0.9}, {"top_k": 20, "top_p": 0.9}])
def test_steps_and_the_sync_check_hold_with_top_k_and_top_p(policy_dir, top):
    """The check completion is sampled by the engine, so every token has mass under the learner's filtered
    distribution too (a fixed completion's token could be filtered out on both sides: -inf - -inf = nan)."""
    extra = [f"--rollout.{k}={v}" for k, v in top.items()]
    cfg = load_config("examples/tiny_cpu.toml", [f"--model.path={policy_dir}", "--rollout.workers=1",
                                                  "--rollout.temperature=0.7", *extra])
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    loop = local.start(cfg, model, AutoTokenizer.from_pretrained(policy_dir))  # its first sync is verified
    try:
        for _ in range(2):  # learner steps under the same filtered distribution: finite, synced, verified
            metrics = loop.train_step()
            assert metrics["sync/verified"] == 1.0 and metrics["learner/nonfinite_grad"] == 0.0, metrics
    finally:
        loop.close()


def test_the_reward_workers_are_gone_after_close(loop):
    pids = loop.rollouts.reward_workers.pids()
    loop.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_overlong_shaping_and_mini_batches_run_through_the_loop(policy_dir):
    cfg = load_config("examples/tiny_cpu.toml", [
        f"--model.path={policy_dir}", "--rollout.workers=1", "--rollout.max_new_tokens=16",
        "--learner.overlong_buffer=8", "--learner.mini_batches=2"])
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    loop = local.start(cfg, model, AutoTokenizer.from_pretrained(policy_dir))
    try:
        metrics = loop.train_step()
    finally:
        loop.close()
    assert metrics["learner/overlong_penalty"] < 0 < metrics["learner/overlong_fraction"]
    assert "learner/clip_fraction/mb1" in metrics and loop.learner.optimizer_steps == 2
    assert metrics["sync/verified"] == 1.0


def test_dynamic_sampling_refills_the_batch_with_informative_groups(policy_dir):
    cfg = load_config("examples/tiny_cpu.toml", [
        f"--model.path={policy_dir}", "--rollout.workers=1", "--rollout.problems_per_step=4",
        "--rollout.group_size=4", "--rollout.max_refill_rounds=3"])
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    loop = local.start(cfg, model, AutoTokenizer.from_pretrained(policy_dir))
    try:
        steps = [loop.train_step() for _ in range(4)]
    finally:
        loop.close()
    assert any(m["rollout/rounds"] > 1 for m in steps), "no step needed a refill: the test proves nothing"
    assert loop.sampler.position == 4 * sum(m["rollout/rounds"] for m in steps)
    for m in steps:
        assert m["rollout/groups_sampled"] == 4 * m["rollout/rounds"]
        assert m["rollout/groups_dropped"] == m["rollout/groups_sampled"] - 4  # the learner always gets P
        # the loop's informative groups are exactly the groups the learner keeps
        assert m["learner/groups_kept"] == m["rollout/informative_groups"]
        assert m["learner/groups_uniform"] == 4 - m["rollout/informative_groups"]
        if m["rollout/rounds"] < 4:  # stopped early: P informative groups were found
            assert m["rollout/informative_groups"] == 4
        # the reward metrics count every completion sampled, refills included
        statuses = sum(v for k, v in m.items() if k.startswith("reward/status/"))
        assert statuses == 4 * m["rollout/groups_sampled"]


def test_dynamic_sampling_stops_at_its_bound_and_trains_on_what_it_has(policy_dir):
    """Greedy sampling makes every group uniform: each step takes 1 + max_refill_rounds rounds, hands the
    learner P uniform groups, and the learner skips the update."""
    cfg = load_config("examples/tiny_cpu.toml", [
        f"--model.path={policy_dir}", "--rollout.workers=1", "--rollout.problems_per_step=3",
        "--rollout.group_size=2", "--rollout.top_k=1", "--rollout.max_refill_rounds=2"])
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    loop = local.start(cfg, model, AutoTokenizer.from_pretrained(policy_dir))
    try:
        m = loop.train_step()
    finally:
        loop.close()
    assert m["rollout/rounds"] == 3 and m["rollout/groups_sampled"] == 9 and loop.sampler.position == 9
    assert m["rollout/informative_groups"] == 0 and m["rollout/groups_dropped"] == 6
    assert m["learner/groups_uniform"] == 3 and m["learner/skipped"] == 1
    assert m["sync/verified"] == 1.0
