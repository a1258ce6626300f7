"""The RL loop in one process, no Ray: plain RolloutWorkers and a Learner (the learning test, the GPU check).

    loop = start(cfg, model, tokenizer)          # the learner trains `model`; each worker samples from a copy
    before = loop.evaluate(test_problems, samples=4)
    while loop.step < cfg.run.steps:
        loop.step += 1
        metrics = loop.train_step()              # the step `answerkey rl` runs, synced and verified alike
    loop.close()

    metrics = evaluate_checkpoint("runs/demo/sft/model", cfg.env, problems, samples=4, sampling=..., seed=0)

`start` builds the parts `answerkey rl` starts as actors (answerkey/driver.py) as plain objects and hands
them to the same `Loop`: `rollout.workers` RolloutWorkers, each a torch engine over its own copy of the
model (so every sync really moves and verifies weights), seeded as the driver seeds its workers; a
`Learner` over `model` itself, on whatever device `model` is on; the env's reward workers (killable
processes, as in the driver); the object-store transport, which in one process hands the learner's arrays
to each worker directly. Calls run one after another, and a worker that raises ends the run (there is no
actor to replace). `rollout.transport` must be `object_store`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from answerkey.config import Config, ConfigError, EnvConfig
from answerkey.envs.base import Problem, load_env
from answerkey.learner.learner import Learner
from answerkey.loop import Loop, Rollouts
from answerkey.reward_workers import RewardWorkers
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine
from answerkey.rollout.transfer import make_transport
from answerkey.rollout.worker import RolloutWorker
from answerkey.rundir import RunDir


def start(cfg: Config, model: torch.nn.Module, tokenizer, run: RunDir | None = None) -> Loop:
    """The loop over `model` (trained in place) in this process, its first weight sync done and verified."""
    if cfg.rollout.transport != "object_store":
        raise ConfigError(f"rollout.transport: one process moves weights as arrays (object_store), "
                          f"got {cfg.rollout.transport!r}")
    env = load_env(cfg.env.path, cfg.env.kwargs)
    workers = [RolloutWorker(TorchEngine(copy.deepcopy(model), tokenizer, seed=cfg.run.seed * 1_000 + i,
                                         precision=cfg.rollout.precision))
               for i in range(cfg.rollout.workers)]
    learner = Learner(model, cfg.learner, cfg.rollout.sampling(), total_steps=cfg.run.steps)
    rollouts = Rollouts(env, cfg.env, tokenizer, workers, RewardWorkers.for_env(cfg.env))
    try:
        return Loop(cfg, rollouts, learner, make_transport(cfg.rollout.transport, learner), run)
    except BaseException:
        rollouts.reward_workers.close()
        raise


def evaluate_checkpoint(path: str, env_cfg: EnvConfig, problems: Sequence[Problem], samples: int,
                        sampling: SamplingParams, seed: int = 0) -> dict[str, float]:
    """`Loop.evaluate`'s metrics of the Hugging Face checkpoint at `path`, from one worker seeded `seed`."""
    worker = RolloutWorker(path, seed=seed)
    rollouts = Rollouts(load_env(env_cfg.path, env_cfg.kwargs), env_cfg, worker.engine.tokenizer, [worker],
                        RewardWorkers.for_env(env_cfg))
    try:
        return rollouts.evaluate(problems, samples, sampling)
    finally:
        rollouts.reward_workers.close()

