"""Placement from config: the bundle arithmetic of each mode, and real placement groups on the session's
Ray cluster with GPUs stood in for by CPU fractions (`placement.on_cpus`)."""

from __future__ import annotations

import pytest
import ray

from answerkey import placement
from answerkey.config import load_config
from answerkey.placement import Slot


def cfg(mode: str, workers: int = 2, *extra: str):
    return load_config(None, [f"--placement.mode={mode}", f"--rollout.workers={workers}",
                              "--placement.cpus_per_gpu=4", "--rollout.problems_per_step=10",
                              "--rollout.group_size=4", *extra])


@pytest.mark.parametrize(("mode", "workers", "bundles", "learner", "worker_slots"), [
    ("cpu", 2, [], Slot(None, 0, 0), [Slot(None, 1, 0)] * 2),
    ("colocate", 1, [{"GPU": 1, "CPU": 4}], Slot(0, 1, 0.5), [Slot(0, 3, 0.5)]),
    ("colocate", 2, [{"GPU": 1, "CPU": 4}], Slot(0, 1, 0.5), [Slot(0, 1.5, 0.25)] * 2),
    ("separate", 3, [{"GPU": 1, "CPU": 4}] * 4, Slot(0, 4, 1), [Slot(1, 4, 1), Slot(2, 4, 1), Slot(3, 4, 1)]),
])
def test_plan(mode, workers, bundles, learner, worker_slots):
    plan = placement.make_plan(cfg(mode, workers))
    assert (plan.bundles, plan.learner, plan.workers) == (bundles, learner, worker_slots)
    # the learner trains on its slot's GPU; in cpu mode, and with GPUs stood in for by CPUs, on the CPU
    assert placement.learner_device(plan) == ("cpu" if mode == "cpu" else "cuda")
    assert placement.learner_device(placement.on_cpus(plan, 4)) == "cpu"
    for b in range(len(bundles)):  # no bundle is oversubscribed
        used = [s for s in [plan.learner, *plan.workers] if s.bundle == b]
        assert sum(s.num_gpus for s in used) <= bundles[b]["GPU"]
        assert sum(s.num_cpus for s in used) <= bundles[b]["CPU"]


@pytest.mark.parametrize(("mode", "workers", "bundles", "learners", "worker_slots"), [
    ("cpu", 2, 0, [Slot(None, 0, 0)] * 2, [Slot(None, 1, 0)] * 2),
    ("colocate", 3, 2, [Slot(0, 1, 0.5), Slot(1, 1, 0.5)],
     [Slot(0, 1.5, 0.25), Slot(1, 3, 0.5), Slot(0, 1.5, 0.25)]),
    ("separate", 2, 4, [Slot(0, 4, 1), Slot(1, 4, 1)], [Slot(2, 4, 1), Slot(3, 4, 1)]),
])
def test_plan_with_two_fsdp_learner_ranks(mode, workers, bundles, learners, worker_slots):
    plan = placement.make_plan(cfg(mode, workers, "--learner.world_size=2"))
    assert (len(plan.bundles), plan.learners, plan.workers) == (bundles, learners, worker_slots)
    for b, bundle in enumerate(plan.bundles):
        used = [s for s in [*plan.learners, *plan.workers] if s.bundle == b]
        assert sum(s.num_gpus for s in used) == bundle["GPU"]
        assert sum(s.num_cpus for s in used) <= bundle["CPU"]
    text = placement.describe(plan, cfg(mode, workers, "--learner.world_size=2"))
    assert "2 learner ranks (FSDP2" in text or "each shared by a learner rank" in text
    assert ("nccl" in text) == (mode == "separate")


def test_start_up_banner_states_gpus_and_the_batch_split():
    c = cfg("separate", 3, "--rollout.engine=vllm")
    text = placement.describe(placement.make_plan(c), c)
    assert "4 GPUs = 1 learner + 3 vllm worker(s)" in text and "<= 4 problems = 16 completions each" in text


class Probe:
    def resources(self) -> dict[str, float]:
        return ray.get_runtime_context().get_assigned_resources()


@pytest.mark.parametrize(("mode", "workers", "ranks"),
                         [("colocate", 2, 1), ("separate", 2, 1), ("separate", 1, 2)])
def test_actors_land_in_their_bundles_on_a_real_placement_group(ray_session, mode, workers, ranks):
    plan = placement.on_cpus(placement.make_plan(cfg(mode, workers, f"--learner.world_size={ranks}")),
                             cpus_per_gpu=0.2)
    pg = placement.reserve(plan, timeout_s=60)
    try:
        slots = [*plan.learners, *plan.workers]
        actors = [ray.remote(Probe).options(**placement.actor_options(plan, pg, s)).remote() for s in slots]
        got = ray.get([a.resources.remote() for a in actors], timeout=120)
        for slot, assigned in zip(slots, got, strict=True):
            assert assigned["CPU"] == pytest.approx(slot.num_cpus)
        # what is left in each bundle is its reservation minus the shares of the actors placed in it
        available = ray.available_resources()
        for b, bundle in enumerate(plan.bundles):
            left = available.get(f"CPU_group_{b}_{pg.id.hex()}", 0.0)
            placed = sum(s.num_cpus for s in slots if s.bundle == b)
            assert left == pytest.approx(bundle["CPU"] - placed, abs=1e-6)
        for a in actors:
            ray.kill(a, no_restart=True)
    finally:
        ray.util.remove_placement_group(pg)


def test_a_placement_group_the_cluster_cannot_hold_fails_naming_it(ray_session):
    plan = placement.on_cpus(placement.make_plan(cfg("separate", 2)), cpus_per_gpu=64)
    with pytest.raises(RuntimeError, match="was not reserved"):
        placement.reserve(plan, timeout_s=2)


@pytest.mark.parametrize(("example", "gpus"), [("examples/gsm8k_1gpu.toml", 1),
                                               ("examples/math_8gpu.toml", 8),
                                               ("examples/tiny_cpu.toml", 0)])
def test_examples_validate_and_need_the_gpus_they_state(example, gpus):
    c = load_config(example)
    plan = placement.make_plan(c)
    assert plan.gpus == gpus
