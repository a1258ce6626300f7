"""RolloutWorker: one engine behind the RL loop. A plain class; answerkey rl wraps it in a Ray actor.

    worker = RolloutWorker("runs/sft/policy", seed=1, threads=1)   # or RolloutWorker(engine) of your own
    groups = worker.generate([prompt_ids, ...], n=8, sampling=SamplingParams(...))     # (P, G) Completion
    held = worker.load_weights(named_arrays, version=3)     # {name: checksum} of what it now generates with
    worker.probe(prompt_ids, sampling)   # a seeded completion with its logprobs, for the loop's sync check
    worker.sleep(); worker.wake()        # around the learner's step: vLLM on GPU frees its memory meanwhile

`load_weights` takes the learner's (name, numpy array) pairs (through Ray's object store they arrive
as zero-copy read-only views), copies them into the engine's model, refuses an update that skipped a
parameter, drops the prefix cache, and returns the checksums of the weights the engine now holds:
computed from its own parameters after the load, not from the bytes received, so a tensor altered or
dropped on the way is caught by the loop's comparison with the learner's checksums.

Multi-turn envs own the rollout, so for them the worker builds the env (by dotted path) and runs
`env.rollout` against its engine; an env that raises is reported with the problem's id.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from answerkey.envs.base import Problem, Trajectory, load_env
from answerkey.rollout.engine import Completion, RolloutEngine, SamplingParams
from answerkey.rollout.torch_engine import TorchEngine


class RolloutWorker:
    def __init__(self, model: str | RolloutEngine, seed: int = 0, threads: int | None = None,
                 engine: str = "torch", precision: str = "fp32", gpu_memory_utilization: float = 0.5):
        """`model`: a checkpoint directory to build an `engine` kind from, or an engine of the caller's. The
        engine runs on the GPU when this process sees one (its Ray placement gave it one), else on CPU;
        `gpu_memory_utilization` is vLLM's share of that GPU."""
        self._env = None
        if not isinstance(model, str):
            self.engine = model
            return
        if threads:
            torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()  # no per-load bars in every actor's log
        if engine == "vllm":
            from answerkey.rollout.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(model, seed=seed, precision=precision, threads=threads,
                                     gpu_memory_utilization=gpu_memory_utilization)
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.engine = TorchEngine.from_pretrained(model, seed=seed, precision=precision, device=device)

    def pid(self) -> int:
        return os.getpid()

    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        return self.engine.generate(prompts, n, sampling)

    def rollout(self, env_path: str, env_kwargs: Mapping[str, Any], problems: Sequence[Problem], n: int,
                sampling: SamplingParams) -> list[list[Trajectory]]:
        """Multi-turn: `n` episodes of `env.rollout` per problem, (P, n)."""
        if self._env is None:
            self._env = load_env(env_path, env_kwargs)

        def generate(ids: Sequence[int]) -> Completion:
            return self.engine.generate([list(ids)], 1, sampling)[0][0]

        groups = []
        for problem in problems:
            try:
                groups.append([self._env.rollout(problem, generate, self.engine.tokenizer) for _ in range(n)])
            except Exception as exc:
                raise RuntimeError(f"{env_path}.rollout raised on problem {problem.id!r}: {exc!r}") from exc
        return groups

    def load_weights(self, named_arrays: Sequence[tuple[str, np.ndarray]], version: int) -> dict[str, str]:
        engine = self.engine
        engine.begin_weight_update()
        engine.update_weights(named_arrays)
        engine.finish_weight_update(version)
        engine.reset_prefix_cache()
        return engine.weights_checksum()

    def probe(self, prompt: Sequence[int], sampling: SamplingParams) -> Completion:
        return self.engine.probe(prompt, sampling)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()

    def rng_state(self) -> torch.Tensor:
        return self.engine.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.engine.generator.set_state(state)
