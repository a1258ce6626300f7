"""The learner as the driver sees it: `learner.world_size` Ray actors driven as one actor handle.

    learner = start(cfg, model_path, plan, pg)         # 1: a PretrainedLearner actor; N > 1: N ShardedLearner ranks
    metrics = ray.get(learner.step.remote(groups))     # runs on every rank, in the same order; rank 0's result
    ref = learner.named_arrays.remote()                # rank 0's gathered weights (the transports use it)
    learner.kill()

Each attribute in `METHODS` fans a call out to every rank (the same arguments, submitted in rank order,
so every rank runs the same sequence of collectives) and returns rank 0's ObjectRef: the driver and the
weight transports (rollout/transfer.py) use the group exactly as they used the single learner actor.
Rank 0 holds the full weights for a sync (gathered), its checksums and its metrics are the group's (the
metrics are reduced over the ranks inside `step`). A rank that fails aborts the group (learner/fsdp.py),
so rank 0's ref raises too, naming every rank's error; a dead learner ends the run, as before.

The ranks rendezvous on a TCPStore hosted here (the driver's node, like the weight broadcast), and form
one process group: gloo when their placement slots have no GPU (CPU tests, `placement.mode = "cpu"`),
NCCL when each rank has a GPU. Ray appears here because this is where the learner actors are started.
"""

from __future__ import annotations

import datetime
from typing import Any

import ray
import torch

from answerkey import placement
from answerkey.config import Config
from answerkey.learner.fsdp import ShardedLearner
from answerkey.learner.learner import PretrainedLearner
from answerkey.rollout.transfer import GroupSpec

METHODS = ("step", "named_arrays", "weights_checksum", "logprobs_of", "weights_nbytes", "save_checkpoint", "resume",
           "__ray_call__")
COLLECTIVE_TIMEOUT_S = 1800.0  # a collective that waits longer fails (a rank that died without aborting)
START_TIMEOUT_S = 600.0  # loading and sharding the model on every rank


class Fanout:
    """`fanout.remote(*args)`: `actor.<name>.remote(*args)` on every actor in order; rank 0's ObjectRef."""

    def __init__(self, actors: list, name: str):
        self.actors, self.name = actors, name

    def remote(self, *args: Any, **kwargs: Any):
        refs = [getattr(actor, self.name).remote(*args, **kwargs) for actor in self.actors]
        return refs[0]


class LearnerGroup:
    def __init__(self, actors: list, store: Any = None):
        self.actors = actors
        self.store = store  # the rendezvous TCPStore, alive as long as the group
        for name in METHODS:
            setattr(self, name, Fanout(actors, name))

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def start(cfg: Config, model_path: str, plan: placement.Plan, pg) -> LearnerGroup:
    """Start the learner: one PretrainedLearner actor, or `learner.world_size` FSDP ranks; waits until all are up."""
    n, sampling = cfg.learner.world_size, cfg.rollout.sampling()
    options = [placement.actor_options(plan, pg, slot) for slot in plan.learners]
    if n == 1:
        actor = ray.remote(max_restarts=0)(PretrainedLearner).options(**options[0]).remote(
            model_path, cfg.learner, sampling, cfg.run.steps, reference_path=cfg.model.path, threads=cfg.learner.threads)
        return LearnerGroup([actor])
    host = ray.util.get_node_ip_address()
    store = torch.distributed.TCPStore(host, 0, n + 1, is_master=True, wait_for_workers=False,
                                       timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    spec = GroupSpec(host, store.port, n, placement.learner_backend(plan), COLLECTIVE_TIMEOUT_S)
    cls = ray.remote(max_restarts=0)(ShardedLearner)
    actors = [cls.options(**options[rank]).remote(model_path, cfg.learner, sampling, cfg.run.steps, rank, spec,
                                                  reference_path=cfg.model.path, threads=cfg.learner.threads)
              for rank in range(n)]
    group = LearnerGroup(actors, store)
    try:
        wait_all([a.__ray_ready__.remote() for a in actors], START_TIMEOUT_S)
    except BaseException:
        group.kill()
        raise
    return group


def wait_all(refs: list, timeout_s: float) -> list:
    """Every ref's value; the first failure raises at once (a rank stuck waiting for a failed peer is not awaited)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
        if not done:
            raise TimeoutError(f"{len(pending)} of {len(refs)} learner ranks did not start within {timeout_s:.0f} s")
        ray.get(done[0])
    return ray.get(refs)
