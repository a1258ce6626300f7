"""`answerkey rl CONFIG`: the RL loop (answerkey/loop.py) on Ray actors.

    answerkey rl examples/tiny_cpu.toml --model.path=runs/demo/sft/model --run.name=first
    answerkey rl examples/tiny_cpu.toml --model.path=runs/demo/sft/model --run.name=first --resume

    loop = start(cfg, RunDir.create(cfg))     # in Python: the actors started, the first sync verified
    loop.train_step(); loop.close()

`start` places and starts the actors — `rollout.workers` RolloutWorkers (each a torch or vLLM engine) and
the learner (one actor, or `learner.world_size` FSDP2 ranks behind one handle, learner/group.py) — builds
the env's reward workers (killable processes, not actors) and the weight transport (`rollout.transport`),
and hands them to `Loop`. This file, learner/group.py and answerkey/placement.py are where Ray appears:
the learner, workers and reward workers are plain classes, and the loop calls them through
answerkey/handles.py. On CPU the learner runs while the workers wait (the loop is synchronous), so it
reserves no cores (`num_cpus=0`); each worker reserves `rollout.threads_per_worker`. A learner that dies
ends the run (resume from the last checkpoint); a worker that dies is replaced by a fresh actor.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from transformers import AutoTokenizer

from answerkey import placement
from answerkey.config import Config, ConfigError
from answerkey.envs.base import load_env
from answerkey.handles import ActorDied, CallFailed, call, get
from answerkey.learner import group as learner_group
from answerkey.loop import Loop, Rollouts, resume_point
from answerkey.reward_workers import RewardWorkers
from answerkey.rollout.transfer import make_transport
from answerkey.rollout.worker import RolloutWorker
from answerkey.rundir import RunDir

RESOURCE_WAIT_S = 60.0  # how long start-up waits for CPUs still held by a previous run's exiting actors
# vLLM's share of a GPU: beside the learner on the same card, or a card of its own
VLLM_GPU_MEMORY = {"colocate": 0.45, "separate": 0.85}


def start(cfg: Config, run: RunDir, resume: bool = False, console: Console | None = None) -> Loop:
    """Start every actor for `cfg` and return the loop, its first weight sync done and verified.

    With `resume`, the run continues from its latest checkpoint (none: from step 0). If anything fails on the
    way, what was started is stopped before the error propagates.
    """
    console = console or Console()
    env = load_env(cfg.env.path, cfg.env.kwargs)
    ckpt = resume_point(cfg, run, console) if resume else None
    # a sharded (FSDP) checkpoint has no HF weights: everything starts from the initial policy, the
    # learner ranks load the checkpoint's shards, and the first sync gives the workers those weights
    model_path = str(ckpt.model_dir) if ckpt and not ckpt.sharded else cfg.model.path
    if not model_path or not (Path(model_path) / "config.json").exists():
        raise ConfigError(f"model.path: {model_path!r} is not a Hugging Face checkpoint directory "
                          "(no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    check_resources(cfg)
    plan = placement.make_plan(cfg)
    started = Started(placement.reserve(plan))
    try:
        console.print(placement.describe(plan, cfg))
        started.learner = learner_group.start(cfg, model_path, plan, started.pg)  # N ranks behind one handle

        def new_worker(i: int, restarts: int = 0):
            options = placement.actor_options(plan, started.pg, plan.workers[i])
            return start_worker(cfg, model_path, i, options, restarts)

        def replace_worker(i: int, old: Any, restarts: int):
            ray.kill(old, no_restart=True)
            return new_worker(i, restarts)

        for i in range(cfg.rollout.workers):
            started.workers.append(new_worker(i))
        wait_started(cfg, started.workers)
        rollouts = Rollouts(env, cfg.env, tokenizer, started.workers, RewardWorkers.for_env(cfg.env))
        transport = make_transport(cfg.rollout.transport, started.learner)
    except BaseException:
        started.stop()
        raise
    try:
        return Loop(cfg, rollouts, started.learner, transport, run, replace_worker=replace_worker,
                    resume_from=ckpt, on_close=started.stop, console=console)
    except BaseException:  # e.g. the first sync failed: leave no actor or reward process behind
        rollouts.reward_workers.close()
        started.stop()
        raise


class Started:
    """The actors `start` has started so far, so that `stop` ends exactly those (the loop replaces a dead
    worker in `workers`, this very list)."""

    def __init__(self, pg):
        self.pg, self.learner, self.workers = pg, None, []

    def stop(self) -> None:
        if self.learner is not None:
            self.learner.kill()
        for actor in self.workers:
            ray.kill(actor, no_restart=True)
        if self.pg is not None:
            ray.util.remove_placement_group(self.pg)


def start_worker(cfg: Config, model_path: str, index: int, options: dict, restarts: int = 0):
    """Rollout worker `index` as a Ray actor; a replacement (`restarts` > 0) gets a seed of its own. A vLLM
    engine sharing its GPU with the learner (placement colocate) takes less of it."""
    seed = cfg.run.seed * 1_000 + index + 100 * restarts
    memory = VLLM_GPU_MEMORY["colocate" if cfg.placement.mode == "colocate" else "separate"]
    actor = ray.remote(max_restarts=0)(RolloutWorker).options(**options)
    return actor.remote(model_path, seed=seed, threads=cfg.rollout.threads_per_worker,
                        engine=cfg.rollout.engine, precision=cfg.rollout.precision,
                        gpu_memory_utilization=memory)


def wait_started(cfg: Config, workers: list) -> None:
    """Wait until every worker's engine is up; one that failed to start (vLLM missing, a model its engine
    cannot serve) stops the run here, with the engine's own message, before the loop could retry it."""
    for i, ref in enumerate([call(w, "pid") for w in workers]):
        try:
            get(ref)
        except (ActorDied, CallFailed) as exc:
            lines = [line for line in str(exc.__cause__ or exc).splitlines() if line.strip()]
            reason = next((line for line in reversed(lines) if "Error" in line or "Unavailable" in line),
                          lines[-1] if lines else repr(exc))
            raise ConfigError(f"rollout worker {i} (rollout.engine = {cfg.rollout.engine!r}) did not start: "
                              f"{reason.strip()}") from None


def check_resources(cfg: Config, wait_s: float = RESOURCE_WAIT_S) -> None:
    """Fail at start-up, not as a silent hang of pending actors, when the workers cannot all be placed.

    CPUs held by actors that are still shutting down (a previous run in the same cluster) are waited for.
    """
    needed = cfg.rollout.workers * cfg.rollout.threads_per_worker
    have = ray.cluster_resources().get("CPU", 0)
    if needed > have:
        raise ConfigError(f"rollout.workers x rollout.threads_per_worker = {needed} CPUs, but the Ray "
                          f"cluster has {have:g}; use fewer workers or threads")
    deadline = time.monotonic() + wait_s
    while (free := ray.available_resources().get("CPU", 0)) < needed:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the rollout workers need {needed} CPUs but only {free:g} of the cluster's "
                               f"{have:g} have been free for {wait_s:g} s (another run's actors hold the "
                               "rest); wait for it or use fewer workers")
        time.sleep(0.2)


def init_ray() -> None:
    """Connect to the cluster in RAY_ADDRESS (a submitted job), or start a local one without the dashboard."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local dev cluster; clusters set their own auth
        ray.init(include_dashboard=False)


def main(cfg: Config, resume: bool = False) -> dict[str, float]:
    init_ray()
    run = RunDir.create(cfg, resume=resume)
    try:
        loop = start(cfg, run, resume=resume)
        try:
            return loop.run()
        finally:
            loop.close()
    finally:
        run.close()
