"""Where the learner and the rollout workers run: Ray placement groups from `[placement]` in the config.

    plan = make_plan(cfg)                 # pure arithmetic: bundles and each actor's share of one
    print(describe(plan, cfg))            # printed at start-up with the batch arithmetic
    pg = reserve(plan)                    # the placement group (None in cpu mode), ready
    actor_cls.options(**actor_options(plan, pg, plan.workers[0])).remote(...)

| mode       | bundles                  | learner rank r           | rollout worker i                       |
|------------|--------------------------|--------------------------|----------------------------------------|
| `cpu`      | none (plain actors)      | 0 CPU                    | rollout.threads_per_worker CPUs        |
| `colocate` | N x {GPU: 1, CPU: c}     | bundle r, GPU 0.5, CPU 1 | bundle i mod N, GPU 0.5/k, CPU (c-1)/k |
| `separate` | (N+W) x {GPU: 1, CPU: c} | bundle r, GPU 1, CPU c   | bundle N+i, GPU 1, CPU c               |

N = learner.world_size (N > 1: FSDP2 ranks, learner/fsdp.py), W = rollout.workers, c = placement.cpus_per_gpu,
k = the workers sharing bundle i mod N. In cpu mode the actors are plain ones, as in the tests, and the
learner reserves no CPU: it runs while the workers wait. Colocated engines share a GPU with a learner rank by
time, not by memory: they sleep while it trains (vLLM `sleep`/`wake_up`); the fractions only tell Ray they may
share it. The learner trains on its slot's GPU when it has one (`learner_device`); its ranks use NCCL then,
gloo otherwise (learner/group.py). Not here: multi-node tensor parallelism, heterogeneous GPU types,
autoscaling requests.
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
    learners: list[Slot]  # one per learner rank
    workers: list[Slot]

    @property
    def learner(self) -> Slot:
        """Rank 0's slot (every rank's is alike)."""
        return self.learners[0]

    @property
    def gpus(self) -> float:
        return sum(b.get("GPU", 0) for b in self.bundles)


def make_plan(cfg: Config) -> Plan:
    p, workers, n = cfg.placement, cfg.rollout.workers, cfg.learner.world_size
    if p.mode == "cpu":
        return Plan("cpu", [], p.strategy, [Slot(None, 0, 0)] * n,
                    [Slot(None, cfg.rollout.threads_per_worker, 0)] * workers)
    c = p.cpus_per_gpu
    if p.mode == "colocate":
        sharing = [sum(1 for i in range(workers) if i % n == b) for b in range(n)]  # workers per bundle
        return Plan("colocate", [{"GPU": 1, "CPU": c} for _ in range(n)], p.strategy,
                    [Slot(r, 1, 0.5) for r in range(n)],
                    [Slot(i % n, (c - 1) / sharing[i % n], 0.5 / sharing[i % n]) for i in range(workers)])
    bundles = [{"GPU": 1, "CPU": c} for _ in range(n + workers)]
    return Plan("separate", bundles, p.strategy, [Slot(r, c, 1) for r in range(n)],
                [Slot(n + i, c, 1) for i in range(workers)])


def on_cpus(plan: Plan, cpus_per_gpu: float) -> Plan:
    """The same plan with each GPU replaced by `cpus_per_gpu` CPUs and no CPUs of its own: for testing
    the placement logic on a CPU-only cluster."""
    bundles = [{"CPU": b["GPU"] * cpus_per_gpu} for b in plan.bundles]

    def slot(s: Slot) -> Slot:
        return replace(s, num_cpus=s.num_gpus * cpus_per_gpu, num_gpus=0)

    return replace(plan, bundles=bundles, learners=[slot(s) for s in plan.learners],
                   workers=[slot(s) for s in plan.workers])


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
        raise RuntimeError(f"placement group {plan.bundles} ({plan.strategy}) was not reserved within "
                           f"{timeout_s:.0f} s; the cluster has {ray.cluster_resources()}")
    return pg


def actor_options(plan: Plan, pg, slot: Slot) -> dict[str, Any]:
    """`.options(...)` for an actor in `slot`: its resources, and its bundle (child tasks stay in the
    group)."""
    options: dict[str, Any] = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus}
    if pg is not None and slot.bundle is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=slot.bundle,
            placement_group_capture_child_tasks=True)
    return options


def learner_device(plan: Plan) -> str:
    """Where the learner trains: "cuda" when its slot holds a GPU (share), else "cpu" (also on a machine
    with GPUs: cpu mode, or `on_cpus`)."""
    return "cuda" if plan.learner.num_gpus > 0 else "cpu"


def learner_backend(plan: Plan) -> str:
    """torch.distributed backend of the learner ranks: NCCL on GPUs, gloo on CPUs."""
    return "nccl" if learner_device(plan) == "cuda" else "gloo"


def describe(plan: Plan, cfg: Config) -> str:
    """Where everything runs and how one step's batch is split, for the start-up banner."""
    r, n = cfg.rollout, cfg.learner.world_size
    per_worker = -(-r.problems_per_step // r.workers)
    split = (f"{r.problems_per_step} problems over {r.workers} rollout worker(s): <= {per_worker} problems "
             f"= {per_worker * r.group_size} completions each")
    ranks = "1 learner" if n == 1 else f"{n} learner ranks (FSDP2, {learner_backend(plan)})"
    if plan.mode == "cpu":
        return f"placement cpu: {ranks} x 0 CPU, {r.workers} worker(s) x {r.threads_per_worker} CPU; {split}"
    if plan.mode == "colocate":
        gpus = ("1 GPU shared by the learner (0.5)" if n == 1
                else f"{n} GPUs, each shared by a learner rank (0.5)")
        shares = sorted({s.num_gpus for s in plan.workers})
        each = f"{shares[0]:g}" if len(shares) == 1 else f"{shares[0]:g}-{shares[-1]:g}"
        return f"placement colocate: {gpus} and {r.workers} {r.engine} worker(s) ({each} GPU each); {split}"
    return f"placement separate: {plan.gpus:g} GPUs = {ranks} + {r.workers} {r.engine} worker(s); {split}"
