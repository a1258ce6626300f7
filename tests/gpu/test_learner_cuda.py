"""The learner on a GPU in bf16 (autocast over fp32 master weights), and colocated weight sync to the engine.

Sync: the learner's weights go into an engine holding its own copy of the model on the same GPU, as
numpy arrays through host memory (`rollout.weights.named_arrays`, what the object store carries) or
as the learner's tensors copied in place on the GPU. Afterwards the engine's checksums must equal
the learner's weights as the engine holds them (cast to bf16 for a bf16 engine), and the engine's
logprobs of the completions it samples must equal the learner's logprobs of the same tokens.
"""

import math
import random
import time

import pytest
import torch

from answerkey import chat
from answerkey.config import LearnerConfig
from answerkey.learner.learner import Learner
from answerkey.rollout import weights
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine
from tests.gpu import (
    DEVICE,
    checksums_as,
    informative_groups,
    learner_logprobs,
    push,
    requires_gpu,
    synchronize,
)

pytestmark = requires_gpu

SAMPLING = SamplingParams(max_new_tokens=24, temperature=0.9)
# (max, mean) of |engine logprob - learner logprob| over the sampled tokens after a sync. fp32 engine and
# fp32 learner: the same weights, kernels differ in summation order. bf16 engine (bf16 weights, bf16
# residual stream) against the bf16-autocast learner (the same bf16-rounded weights in its matmuls, but
# an fp32 residual stream and fp32 norms): the gap TIS corrects for (learner.tis_cap); measured gaps:
# benchmarks/RESULTS.md `gpu-sync-logprobs`. A sync that missed a parameter moves the mean by far more
# than 0.03.
SYNC_ATOL = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (0.5, 0.03)}


def test_bf16_learner_steps_on_fp32_master_weights(policy):
    engine = TorchEngine(policy.copy(), policy.tokenizer, seed=1)
    groups = informative_groups(engine, policy.env, policy.tokenizer, SAMPLING, 16, 8, random.Random(0))
    cfg = {"lr": 1e-4, "tis_cap": None}
    fp32 = Learner(policy.copy(), LearnerConfig(**cfg), SAMPLING, total_steps=4)
    bf16 = Learner(policy.copy(), LearnerConfig(**cfg, precision="bf16"), SAMPLING, total_steps=4)
    grads = []
    for learner in (fp32, bf16):
        learner.optimizer.zero_grad(set_to_none=True)
        metrics = learner.backward(learner.prepare(groups))
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        grads.append(torch.cat([p.grad.flatten() for p in learner.model.parameters()]))
    cosine = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
    ratio = float(grads[1].norm() / grads[0].norm())
    print(f"\n[gpu] bf16 vs fp32 gradient on the same batch: cosine {cosine:.4f}, norm ratio {ratio:.3f}")
    assert cosine > 0.95 and 0.8 < ratio < 1.25  # the same update direction and size

    before = {n: p.detach().clone() for n, p in bf16.model.named_parameters()}
    synchronize()
    start = time.perf_counter()
    metrics = bf16.step(groups)
    synchronize()
    print(f"[gpu] bf16 learner step: {sum(len(g) for g in groups)} sequences in "
          f"{time.perf_counter() - start:.3f} s")
    assert metrics["learner/skipped"] == 0 and metrics["learner/grad_norm"] > 0
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    for name, p in bf16.model.named_parameters():
        assert p.dtype == torch.float32 and p.device.type == DEVICE, name  # master weights stay fp32
    assert any(not torch.equal(before[n], p) for n, p in bf16.model.named_parameters())


@pytest.mark.parametrize("route", ["host", "device"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_colocated_sync_checksums_and_logprobs_agree(policy, dtype, route):
    precision = "fp32" if dtype == torch.float32 else "bf16"
    learner = Learner(policy.copy(), LearnerConfig(lr=1e-3, precision=precision), SAMPLING, total_steps=2)
    engine = TorchEngine(policy.copy(dtype), policy.tokenizer, seed=2)
    learner.step(informative_groups(engine, policy.env, policy.tokenizer, SAMPLING, 16, 8, random.Random(1)))
    expected = checksums_as(learner.model, dtype)
    assert engine.weights_checksum() != expected  # the learner moved; the engine has not seen it yet

    synchronize()
    start = time.perf_counter()
    push(learner.model, engine, version=1, route=route)
    synchronize()
    sync_s = time.perf_counter() - start
    assert engine.version == 1 and engine.weights_checksum() == expected
    if dtype == torch.float32:  # a fp32 engine holds exactly the learner's weights: its own checksums
        assert expected == learner.weights_checksum() == weights.checksums(learner.model)

    prompt_ids = [chat.prompt_ids(policy.tokenizer, p.messages()) for p in policy.env.problems("test")[:8]]
    completions = [c for g in engine.generate(prompt_ids, 2, SAMPLING) for c in g]
    ours = learner_logprobs(learner, [p for p in prompt_ids for _ in range(2)], completions)
    diff = torch.cat([(torch.tensor(c.logprobs) - lp).abs() for c, lp in zip(completions, ours, strict=True)])
    print(f"\n[gpu] sync {precision} via {route}: {sync_s * 1e3:.1f} ms; engine vs learner logprobs on "
          f"{diff.numel()} tokens: max {diff.max():.2e}, mean {diff.mean():.2e}")
    max_atol, mean_atol = SYNC_ATOL[dtype]
    assert diff.numel() > 50 and diff.max() <= max_atol and diff.mean() <= mean_atol
