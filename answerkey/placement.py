"""Where the learner and the rollout workers run: Ray placement groups from `[placement]` in the config.

    plan = make_plan(cfg)                 # pure arithmetic: bundles and each actor's share of one
    print(describe(plan, cfg))            # printed at start-up with the batch arithmetic
    pg = reserve(plan)                    # the placement group (None in cpu mode), ready
    actor_cls.options(**actor_options(plan, pg, plan.workers[0])).remote(...)

| mode       | bundles                                  | learner                  | rollout worker i            |
|------------|------------------------------------------|--------------------------|-----------------------------|
| `cpu`      | none (plain actors, as in the tests)     | 0 CPU (it runs while the workers wait) | rollout.threads_per_worker CPUs |
| `colocate` | 1 x {GPU: 1, CPU: c}                     | bundle 0, GPU 0.5, CPU 1 | bundle 0, GPU 0.5/W, CPU (c-1)/W |
| `separate` | (1 + W) x {GPU: 1, CPU: c}               | bundle 0, GPU 1, CPU c   | bundle 1+i, GPU 1, CPU c    |

W = rollout.workers, c = placement.cpus_per_gpu. Colocated engines share the GPU with the learner by
time, not by memory: they sleep while it trains (vLLM `sleep`/`wake_up`); the fractions only tell Ray
they may share it. The learner is one actor on one GPU (the FSDP learner over several GPUs is not
built yet). Not here: multi-node tensor parallelism, heterogeneous GPU types, autoscaling requests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from answerkey.config import Config


@dataclass(frozen=True)
class Slot:
    """One actor's reservation: a bundle of the placement group (None: no group) and its share of it."""

    bundle: int | None
    num_cpus: float
    num_gpus: float


@dataclass(frozen=True)
class Plan:
    mode: str
    bundles: list[dict[str, float]]
    strategy: str
    learner: Slot
    workers: list[Slot]

    @property
    def gpus(self) -> float:
        return sum(b.get("GPU", 0) for b in self.bundles)


def make_plan(cfg: Config) -> Plan:
    p, workers = cfg.placement, cfg.rollout.workers
    if p.mode == "cpu":
        return Plan("cpu", [], p.strategy, Slot(None, 0, 0), [Slot(None, cfg.rollout.threads_per_worker, 0)] * workers)
    c = p.cpus_per_gpu
    if p.mode == "colocate":
        return Plan("colocate", [{"GPU": 1, "CPU": c}], p.strategy, Slot(0, 1, 0.5),
                    [Slot(0, (c - 1) / workers, 0.5 / workers)] * workers)
    bundles = [{"GPU": 1, "CPU": c} for _ in range(1 + workers)]
    return Plan("separate", bundles, p.strategy, Slot(0, c, 1), [Slot(1 + i, c, 1) for i in range(workers)])


def on_cpus(plan: Plan, cpus_per_gpu: float) -> Plan:
    """The same plan with each GPU replaced by `cpus_per_gpu` CPUs and no CPUs of its own: for testing
    the placement logic on a CPU-only cluster."""
    bundles = [{"CPU": b["GPU"] * cpus_per_gpu} for b in plan.bundles]

    def slot(s: Slot) -> Slot:
        return replace(s, num_cpus=s.num_gpus * cpus_per_gpu, num_gpus=0)

    return replace(plan, bundles=bundles, learner=slot(plan.learner), workers=[slot(s) for s in plan.workers])


def reserve(plan: Plan, timeout_s: float = 120.0):
    """Create the placement group and wait until Ray has reserved it; None in cpu mode."""
    if not plan.bundles:
        return None
    import ray
    from ray.util.placement_group import placement_group

    pg = placement_group(plan.bundles, strategy=plan.strategy, name="answerkey")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise RuntimeError(f"placement group {plan.bundles} ({plan.strategy}) was not reserved within {timeout_s:.0f} s; "
                           f"the cluster has {ray.cluster_resources()}")
    return pg


def actor_options(plan: Plan, pg, slot: Slot) -> dict[str, Any]:
    """`.options(...)` for an actor in `slot`: its resources, and its bundle (child tasks stay in the group)."""
    options: dict[str, Any] = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus}
    if pg is not None and slot.bundle is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=slot.bundle, placement_group_capture_child_tasks=True)
    return options


def describe(plan: Plan, cfg: Config) -> str:
    """Where everything runs and how one step's batch is split, for the start-up banner."""
    r = cfg.rollout
    per_worker = -(-r.problems_per_step // r.workers)
    split = (f"{r.problems_per_step} problems over {r.workers} rollout worker(s): <= {per_worker} problems "
             f"= {per_worker * r.group_size} completions each")
    if plan.mode == "cpu":
        return f"placement cpu: learner 0 CPU, {r.workers} worker(s) x {r.threads_per_worker} CPU; {split}"
    if plan.mode == "colocate":
        return (f"placement colocate: 1 GPU shared by the learner (0.5) and {r.workers} {r.engine} worker(s) "
                f"({plan.workers[0].num_gpus:g} each); {split}")
    return f"placement separate: {plan.gpus:g} GPUs = 1 learner + {r.workers} {r.engine} worker(s); {split}"
