"""The learner as the driver sees it: `learner.world_size` Ray actors driven as one actor handle.

    learner = start(cfg, model_path, plan, pg)       # 1: a PretrainedLearner actor; N > 1: N ShardedLearners
    metrics = ray.get(learner.step.remote(groups))   # runs on every rank, in the same order; rank 0's result
    ref = learner.named_arrays.remote()              # rank 0's gathered weights (the transports use it)
    learner.kill()

Each method of `LearnerGroup` (written out below, one `Fanout` each) fans a call out to every rank (the
same arguments, submitted in rank order, so every rank runs the same sequence of collectives) and returns
rank 0's ObjectRef: the driver and the weight transports (rollout/transfer.py) use the group exactly as a
single learner actor. Rank 0 holds the full weights for a sync (gathered), its checksums and its metrics
are the group's (the metrics are reduced over the ranks inside `step`). A rank that fails aborts the group
(learner/fsdp.py), so rank 0's ref raises too, naming every rank's error; a dead learner ends the run.

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

COLLECTIVE_TIMEOUT_S = 1800.0  # a collective that waits longer fails (a rank that died without aborting)
START_TIMEOUT_S = 600.0  # loading and sharding the model on every rank


class Fanout:
    """One learner method on every rank: `fanout.remote(*args)` calls `actor.<name>.remote(*args)` on each
    actor in rank order and returns rank 0's ObjectRef."""

    def __init__(self, actors: list, name: str):
        self.actors, self.name = actors, name

    def remote(self, *args: Any, **kwargs: Any):
        refs = [getattr(actor, self.name).remote(*args, **kwargs) for actor in self.actors]
        return refs[0]


class LearnerGroup:
    """The learner's ranks behind one actor-like handle: `group.<method>.remote(...)` as on a single actor.

    Each method below is a `Fanout` of the `Learner` (`ShardedLearner` for N > 1) method of that name.
    """

    def __init__(self, actors: list, store: Any = None):
        self.actors = actors
        self.store = store  # the rendezvous TCPStore, alive as long as the group

    @property
    def world_size(self) -> int:
        return len(self.actors)

    @property
    def step(self) -> Fanout:
        """`Learner.step(groups)`: one GRPO update; the metrics are reduced over the ranks."""
        return Fanout(self.actors, "step")

    @property
    def named_arrays(self) -> Fanout:
        """`Learner.named_arrays()`: rank 0's full weights, (name, numpy array) pairs (gathered for N > 1)."""
        return Fanout(self.actors, "named_arrays")

    @property
    def weights_checksum(self) -> Fanout:
        """`Learner.weights_checksum(dtype="float32")`: {parameter name: checksum} of the full weights."""
        return Fanout(self.actors, "weights_checksum")

    @property
    def logprobs_of(self) -> Fanout:
        """`Learner.logprobs_of(prompt, completion)`: the policy's processed logprobs (the sync check's)."""
        return Fanout(self.actors, "logprobs_of")

    @property
    def weights_nbytes(self) -> Fanout:
        """`Learner.weights_nbytes()`: the size of one weight push."""
        return Fanout(self.actors, "weights_nbytes")

    @property
    def save_checkpoint(self) -> Fanout:
        """`Learner.save_checkpoint(root, step, run_state, config_json, keep)`: the checkpoint's path."""
        return Fanout(self.actors, "save_checkpoint")

    @property
    def resume(self) -> Fanout:
        """`Learner.resume(path)`: load the optimizer, schedule and RNG state of a checkpoint."""
        return Fanout(self.actors, "resume")

    @property
    def __ray_call__(self) -> Fanout:
        """Ray's `actor.__ray_call__.remote(fn, *args)`: `fn(learner, *args)` on every rank (the weight
        transports in rollout/transfer.py run their send side this way)."""
        return Fanout(self.actors, "__ray_call__")

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def start(cfg: Config, model_path: str, plan: placement.Plan, pg) -> LearnerGroup:
    """Start the learner: one PretrainedLearner actor, or `learner.world_size` FSDP ranks; waits until all
    are up."""
    n, sampling = cfg.learner.world_size, cfg.rollout.sampling()
    options = [placement.actor_options(plan, pg, slot) for slot in plan.learners]
    if n == 1:
        actor = ray.remote(max_restarts=0)(PretrainedLearner).options(**options[0]).remote(
            model_path, cfg.learner, sampling, cfg.run.steps, reference_path=cfg.model.path,
            threads=cfg.learner.threads, device=placement.learner_device(plan))
        return LearnerGroup([actor])
    host = ray.util.get_node_ip_address()
    store = torch.distributed.TCPStore(host, 0, n + 1, is_master=True, wait_for_workers=False,
                                       timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    spec = GroupSpec(host, store.port, n, placement.learner_backend(plan), COLLECTIVE_TIMEOUT_S)
    cls = ray.remote(max_restarts=0)(ShardedLearner)
    actors = [cls.options(**options[rank]).remote(model_path, cfg.learner, sampling, cfg.run.steps, rank,
                                                  spec, reference_path=cfg.model.path,
                                                  threads=cfg.learner.threads)
              for rank in range(n)]
    group = LearnerGroup(actors, store)
    try:
        wait_all([a.__ray_ready__.remote() for a in actors], START_TIMEOUT_S)
    except BaseException:
        group.kill()
        raise
    return group


def wait_all(refs: list, timeout_s: float) -> list:
    """Every ref's value; the first failure raises at once (a rank stuck waiting for a failed peer is not
    awaited)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
        if not done:
            raise TimeoutError(f"{len(pending)} of {len(refs)} learner ranks did not start within "
                               f"{timeout_s:.0f} s")
        ray.get(done[0])
    return ray.get(refs)
