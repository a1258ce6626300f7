"""GPU tests: the torch engine, the bf16 learner, colocated weight sync and GRPO steps on one CUDA GPU.

    tests/gpu/run.sh                                  # on a lent GPU machine: venv, install, run, summary
    pytest -q -s tests/gpu                            # on a machine with CUDA
    ANSWERKEY_TEST_DEVICE=cpu pytest -q -s tests/gpu  # rehearse the same tests on CPU (slow)

Every test is marked `gpu` and skipped without CUDA, so `make test` on a CPU machine reports them as
skipped. They need only torch, transformers and this package: plain classes in one process, no Ray,
no vLLM. Tolerances are stated where they are used and measured numbers are printed (`-s`), never
asserted.
"""

import os
import random

import pytest
import torch

from answerkey.envs.base import Trajectory, score_batch
from answerkey.learner.batch import Row, collate, completion_values
from answerkey.learner.learner import Learner
from answerkey.loop import prompts_for
from answerkey.rollout import weights
from answerkey.rollout.engine import Completion, SamplingParams
from answerkey.rollout.torch_engine import TorchEngine

DEVICE = os.environ.get("ANSWERKEY_TEST_DEVICE", "cuda")

requires_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (ANSWERKEY_TEST_DEVICE=cpu rehearses these tests on CPU)"),
]


def synchronize() -> None:
    """Wait for queued GPU work, so a wall-clock time covers it."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def checksums_as(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, str]:
    """The checksums an engine holding `model`'s weights in `dtype` must report (`rollout.weights`)."""
    return {name: weights.checksum(p.detach().to(dtype)) for name, p in model.named_parameters()}


def push(model: torch.nn.Module, engine: TorchEngine, version: int, route: str = "host") -> None:
    """Learner -> engine weight sync: as numpy arrays through host memory (`named_arrays`, the
    object-store payload), or as the learner's own tensors, copied in place on the GPU ("device")."""
    pairs = (weights.named_arrays(model) if route == "host"
             else [(n, p.detach()) for n, p in model.named_parameters()])
    engine.begin_weight_update()
    engine.update_weights(pairs)
    engine.finish_weight_update(version)


def informative_groups(engine: TorchEngine, env, tokenizer, sampling: SamplingParams, problems: int,
                       group_size: int, rng: random.Random) -> list[list[Trajectory]]:
    """`group_size` scored completions for each of `problems` random training problems; fails unless at
    least one group's rewards differ (a batch that all scored alike has nothing to learn from)."""
    chosen = rng.sample(env.problems("train"), problems)
    prompts = prompts_for(tokenizer, chosen)
    completions = engine.generate(prompts, group_size, sampling)
    scores = score_batch(env, [p for p in chosen for _ in range(group_size)],
                         [c.text for g in completions for c in g])
    groups = [[Trajectory.from_completion(prompts[i], c, scores[i * group_size + j])
               for j, c in enumerate(g)] for i, g in enumerate(completions)]
    assert any(len({t.score.value for t in g}) > 1 for g in groups), \
        f"every one of {len(groups)} groups scored alike: the policy is too weak to test with"
    return groups


def learner_logprobs(learner: Learner, prompts: list[list[int]],
                     completions: list[Completion]) -> list[torch.Tensor]:
    """The learner's processed logprobs (CPU, float32) of given completions, one tensor per completion."""
    rows = [Row(p + c.token_ids, len(p), [1] * len(c.token_ids), c.logprobs, 0.0)
            for p, c in zip(prompts, completions, strict=True)]
    mb = collate(rows, list(range(len(rows))))
    with torch.no_grad():
        logprobs, _ = learner.logprobs(learner.model, mb)
    return [v.float().cpu() for v in completion_values(mb, logprobs)]
