"""The learner on a GPU in bf16 (autocast over fp32 master weights), built from a checkpoint directory as
`answerkey rl` builds it, its logprobs a chunk of tokens at a time, and colocated weight sync to the engine.

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
from answerkey.envs.base import Trajectory
from answerkey.learner.learner import Learner, PretrainedLearner
from answerkey.model import build_model
from answerkey.model.completion import LOGPROB_CHUNK
from answerkey.rewards import Score, Status
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


def test_pretrained_learner_from_a_checkpoint_directory_trains_on_the_gpu_and_resumes(policy, tmp_path):
    """`PretrainedLearner(path)`, as `answerkey rl` starts it (no device named: the GPU torch sees), puts the
    policy and a KL reference from another directory on the GPU, steps there, and a fresh one resumes from its
    checkpoint: AdamW's state back on the GPU, the GPU's RNG state restored, the same logprobs."""
    for name in ("policy", "initial"):
        policy.model.save_pretrained(tmp_path / name)
        policy.tokenizer.save_pretrained(tmp_path / name)
    cfg = LearnerConfig(lr=1e-4, kl_coef=0.05, precision="bf16")
    initial = str(tmp_path / "initial")
    learner = PretrainedLearner(str(tmp_path / "policy"), cfg, SAMPLING, 4, reference_path=initial)
    assert learner.device.type == DEVICE
    assert {p.device.type for m in (learner.model, learner.reference) for p in m.parameters()} == {DEVICE}
    engine = TorchEngine(policy.copy(), policy.tokenizer, seed=3)
    groups = informative_groups(engine, policy.env, policy.tokenizer, SAMPLING, 16, 8, random.Random(2))
    synchronize()
    start = time.perf_counter()
    metrics = learner.step(groups)
    synchronize()
    print(f"\n[gpu] PretrainedLearner on {learner.device}: a bf16 step with KL of {sum(map(len, groups))} "
          f"sequences in {time.perf_counter() - start:.3f} s")
    assert metrics["learner/skipped"] == 0 and metrics["learner/grad_norm"] > 0, metrics
    assert all(math.isfinite(v) for v in metrics.values()), metrics

    path = learner.save_checkpoint(str(tmp_path / "checkpoints"), 1, {}, "{}", keep=1)
    state = learner.state_dict()
    assert ("cuda_rng" in state) == (DEVICE == "cuda")
    resumed = PretrainedLearner(f"{path}/model", cfg, SAMPLING, 4, reference_path=initial)
    resumed.resume(path)
    assert resumed.optimizer_steps == 1 and resumed.device.type == DEVICE
    if DEVICE == "cuda":
        assert torch.equal(torch.cuda.get_rng_state(resumed.device), state["cuda_rng"])
    for a, b in zip(resumed.optimizer.state_dict()["state"].values(), state["optimizer"]["state"].values(),
                    strict=True):
        assert a["exp_avg"].device.type == DEVICE and torch.equal(a["exp_avg"], b["exp_avg"])
    prompt = chat.prompt_ids(policy.tokenizer, policy.env.problems("test")[0].messages())
    completion = groups[0][0].completion_ids
    diff = max(abs(x - y) for x, y in zip(learner.logprobs_of(prompt, completion),
                                          resumed.logprobs_of(prompt, completion), strict=True))
    assert diff < 1e-5, diff


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_chunked_logprobs_match_all_logits_at_once(policy, precision):
    """The learner's logprobs and gradient with its logits a chunk of 64 tokens at a time (recomputed in the
    backward) against all at once, on the device: the same up to the GEMMs' summation order (and, in bf16,
    the rounding of logits that order moves)."""
    model = policy.copy()
    learner = Learner(model, LearnerConfig(lr=1e-4, precision=precision), SAMPLING, total_steps=1)
    engine = TorchEngine(policy.copy(), policy.tokenizer, seed=4)
    groups = informative_groups(engine, policy.env, policy.tokenizer, SAMPLING, 8, 8, random.Random(3))
    mb = learner.prepare(groups).micro_batches(10**6)[0]
    assert mb.targets.numel() > 4 * 64  # several chunks
    mask = mb.loss_mask.to(DEVICE)
    results = []
    for chunk in (None, 64):
        learner.logprob_chunk = chunk
        model.zero_grad(set_to_none=True)
        logprobs, _ = learner.logprobs(model, mb)
        (logprobs * mask).sum().backward()
        results.append((logprobs.detach()[mask.bool()].double().cpu(),
                        torch.cat([p.grad.flatten() for p in model.parameters()]).double().cpu()))
    (want, want_grad), (got, got_grad) = results
    diff = (got - want).abs()
    cosine = float(torch.nn.functional.cosine_similarity(got_grad, want_grad, dim=0))
    print(f"\n[gpu] chunked vs all logits at once, {precision}, {diff.numel()} tokens: max |dlogprob| "
          f"{diff.max():.2e}, mean {diff.mean():.2e}; gradient cosine {cosine:.6f}, norm ratio "
          f"{float(got_grad.norm() / want_grad.norm()):.5f}")
    max_atol, mean_atol, min_cosine = (1e-4, 1e-5, 0.99999) if precision == "fp32" else (0.5, 0.02, 0.999)
    assert diff.max() <= max_atol and diff.mean() <= mean_atol and cosine >= min_cosine


@pytest.mark.skipif(DEVICE != "cuda", reason="measures torch.cuda.max_memory_allocated (GPU only)")
def test_chunked_logprobs_peak_memory_at_a_qwen_sized_vocabulary():
    """At Qwen2.5's vocabulary (151,936) and 8,192 completion tokens in one micro-batch, all logits at once
    are 5 GB in fp32 per copy; a chunk of LOGPROB_CHUNK tokens is 0.6 GB. Prints both peaks and times."""
    vocab, rows, tokens = 151936, 64, 128
    model = build_model("1.4m", vocab, [1], seed=0).to(DEVICE)
    learner = Learner(model, LearnerConfig(lr=1e-5, micro_batch_tokens=10**6), SAMPLING, total_steps=1)
    rng = random.Random(0)
    prompts = [[rng.randrange(8, vocab) for _ in range(40)] for _ in range(rows // 8)]
    groups = [[Trajectory(p, [rng.randrange(8, vocab) for _ in range(tokens)], [1] * tokens, [-10.0] * tokens,
                          Score(float(g % 2), Status.correct if g % 2 else Status.wrong), "length")
               for g in range(8)] for p in prompts]
    batch = learner.prepare(groups)
    peaks = {}
    for chunk in (None, LOGPROB_CHUNK, None, LOGPROB_CHUNK):  # the second round is timed warm
        learner.logprob_chunk = chunk
        learner.optimizer.zero_grad(set_to_none=True)
        synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        learner.backward(batch)
        synchronize()
        peaks[chunk] = ((torch.cuda.max_memory_allocated() - base) / 2**30, time.perf_counter() - start)
    (all_gb, all_s), (chunked_gb, chunked_s) = peaks[None], peaks[LOGPROB_CHUNK]
    print(f"\n[gpu] learner backward, vocabulary {vocab}, {rows} x {tokens} tokens: logits all at once "
          f"{all_gb:.2f} GB peak, {all_s:.3f} s; a chunk of {LOGPROB_CHUNK} at a time {chunked_gb:.2f} GB, "
          f"{chunked_s:.3f} s")
    assert chunked_gb < all_gb / 3
