"""The fast paths against their references: oneDNN `linear` vs `F.linear` (answerkey/model/onednn.py), the
learner's shared-prompt forward vs the Hugging Face forward and its chunked logprobs vs all logits at once
(answerkey/model/completion.py), inverse-CDF sampling vs the distribution, and the engine's bf16 precision."""

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from answerkey import chat
from answerkey.config import LearnerConfig
from answerkey.envs import Trajectory
from answerkey.learner.batch import completion_values
from answerkey.learner.learner import Learner
from answerkey.model import completion
from answerkey.model.onednn import ONEDNN, keep_freed_memory, linear
from answerkey.rewards import Score, Status
from answerkey.rollout import sampling as S
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine


@pytest.mark.parametrize("shape", [(7, 33), (3, 5, 33)])
@pytest.mark.parametrize("residual", [False, True])
def test_linear_equals_f_linear_forward_and_backward(shape, residual):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(17, 33, requires_grad=True)
    r = torch.randn(*shape[:-1], 17)
    ours = linear(x, w, residual=r if residual else None)
    ref = F.linear(x, w) + (r if residual else 0)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    ours_grads = torch.autograd.grad(ours, (x, w), g)
    ref_grads = torch.autograd.grad(ref, (x, w), g)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    with torch.inference_mode():  # the engine's path (fused residual add)
        torch.testing.assert_close(linear(x, w, residual=r if residual else None), ref.detach(), rtol=1e-5,
                                   atol=1e-5)
    bf16 = linear(x.detach().bfloat16(), w.detach().bfloat16())
    assert bf16.dtype == torch.bfloat16 and (bf16.float() - F.linear(x, w)).abs().max() < 0.5


def test_onednn_is_used_on_this_cpu():
    """The speed of the CPU engine and learner rests on it; a torch without it falls back silently
    otherwise."""
    assert ONEDNN


def test_glibc_keeps_freed_memory_on_linux():
    """Without it a few-MB activation page-faults back in on most calls."""
    assert keep_freed_memory() and keep_freed_memory()  # takes effect, and again (idempotent)


def make_groups(tokenizer, env, P=3, G=4, seed=0):
    rng = random.Random(seed)
    groups = []
    for p in range(P):
        prompt = chat.prompt_ids(tokenizer, env.problems("train")[p * 5].messages())
        group = []
        for g in range(G):
            n = 2 + (p * G + g) * 7 % 11
            ids = [rng.randrange(10, len(tokenizer)) for _ in range(n)]
            score = Score(float(g % 2), Status.correct if g % 2 else Status.wrong)
            group.append(Trajectory(prompt, ids, [1] * n, [-2.0] * n, score, "stop"))
        groups.append(group)
    return groups


def test_micro_batches_run_each_distinct_prompt_once(tokenizer, synthetic_env, make_model):
    groups = make_groups(tokenizer, synthetic_env)
    learner = Learner(make_model(), LearnerConfig(lr=1e-3), SamplingParams(max_new_tokens=16), total_steps=1)
    batch = learner.prepare(groups)
    (mb,) = batch.micro_batches(10**6)
    assert mb.prompt_ids.shape[0] == 3 and mb.targets.shape[0] == 12
    lengths = [len(t.prompt_ids) for g in groups for t in g]
    Tc = mb.targets.shape[1]
    assert mb.num_tokens == 3 * max(lengths) + 12 * Tc < 12 * (max(lengths) + Tc)
    for n, i in enumerate(mb.index):  # every row's prompt and completion are where its index says
        row = batch.rows[i]
        prompt = mb.prompt_ids[mb.prompt_index[n]][mb.prompt_valid[mb.prompt_index[n]]].tolist()
        assert prompt + mb.targets[n, : mb.lengths[n]].tolist() == row.ids


@pytest.mark.parametrize("preset", ["tiny", "1.4m"])  # tiny: grouped-query attention
@pytest.mark.parametrize("explicit_max", [256, 0])  # attention by two matmuls (short sequences), or by SDPA
def test_learner_lean_forward_equals_the_hf_forward(tokenizer, synthetic_env, make_model, monkeypatch, preset,
                                                    explicit_max):
    monkeypatch.setattr(completion, "EXPLICIT_ATTENTION_MAX", explicit_max)
    groups = make_groups(tokenizer, synthetic_env)
    results = []
    for lean in (True, False):
        model = make_model(seed=2, preset=preset)
        learner = Learner(model, LearnerConfig(lr=1e-3, tis_cap=None),
                          SamplingParams(max_new_tokens=16, temperature=0.8), total_steps=1, lean=lean)
        batch = learner.prepare(groups)
        values = {}
        for mb in batch.micro_batches(10**6):
            logprobs, entropy = learner.logprobs(model, mb)
            for i, v, e in zip(mb.index, completion_values(mb, logprobs), completion_values(mb, entropy),
                               strict=True):
                values[i] = (v.detach(), e)
        learner.backward(batch)
        results.append((values, {n: p.grad for n, p in model.named_parameters()}))
    (lean_values, lean_grads), (hf_values, hf_grads) = results
    for i in hf_values:
        torch.testing.assert_close(lean_values[i][0], hf_values[i][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(lean_values[i][1], hf_values[i][1], rtol=0, atol=1e-5)
    for name, grad in hf_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=1e-3, atol=1e-6, msg=name)



def tiny_hf_model(arch: str, vocab: int, seed: int, dtype: torch.dtype) -> torch.nn.Module:
    """A fresh 2-layer Qwen2 (attention bias: Hugging Face's forward, a plain head) or Cohere (its logits
    scaled after the head: all logits at once) of the tests' vocabulary."""
    from transformers import CohereConfig, CohereForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512, pad_token_id=0,
                 bos_token_id=None, eos_token_id=None)
    torch.manual_seed(seed)
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=True)).to(dtype)
    return CohereForCausalLM(CohereConfig(**shape, logit_scale=0.5)).to(dtype)


CHUNK = 7  # tokens: the micro-batch below has 12 rows x 15 completion positions, so 26 chunks, the last of 5


def logprobs_and_kept(model, inputs, top_k, top_p, lean, chunk):
    """`completion_logprobs` at temperature 0.8, and the shapes of the activations autograd keeps for its
    backward (not the parameters; inside a checkpointed chunk it keeps none)."""
    saved, weights = [], {p.data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in weights:
            saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprobs, entropy = completion.completion_logprobs(model, *inputs, 0.8, top_k, top_p, lean=lean,
                                                           chunk=chunk)
    return logprobs, entropy, saved


@pytest.mark.parametrize("arch, lean", [("llama", True), ("llama", False), ("qwen2", False),
                                        ("cohere", False)])
@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (20, 0.9)])
def test_chunked_logprobs_equal_all_logits_at_once_fp64(tokenizer, synthetic_env, make_model, arch, lean,
                                                        top_k, top_p):
    """`completion_logprobs` a chunk of tokens at a time (each chunk's logits recomputed in the backward)
    gives the logprobs, entropies and gradients of `target_logprobs` over all logits at once (`chunk=None`:
    the lean head over the lean forward, or HF's whole forward), and autograd does not keep the (N, Tc, V)
    logits. Cohere's head is not plain: it keeps all logits, and computes its own forward's values."""
    if arch == "llama":
        model = make_model(seed=3, dtype=torch.float64)
    else:
        model = tiny_hf_model(arch, len(tokenizer), seed=3, dtype=torch.float64)
    assert completion.plain_head(model) == (arch != "cohere")
    learner = Learner(model, LearnerConfig(lr=1e-3), SamplingParams(max_new_tokens=16), total_steps=1)
    (mb,) = learner.prepare(make_groups(tokenizer, synthetic_env)).micro_batches(10**6)
    inputs = mb.prompt_ids, mb.prompt_valid, mb.prompt_index, mb.targets
    (N, Tc), V = mb.targets.shape, model.config.vocab_size
    assert N * Tc > 3 * CHUNK and N * Tc % CHUNK  # several chunks, the last one short
    weights = torch.randn(N, Tc, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    results = {}
    for chunk in (None, CHUNK):
        logprobs, entropy, saved = logprobs_and_kept(model, inputs, top_k, top_p, lean, chunk)
        assert logprobs.shape == entropy.shape == (N, Tc) and not entropy.requires_grad
        grads = torch.autograd.grad((logprobs * weights).sum(), params)
        logits_kept = any(len(s) and s[-1] == V and s.numel() >= N * Tc * V for s in saved)  # (N, Tc, V)
        results[chunk] = logprobs.detach(), entropy, grads, logits_kept
    (want, want_entropy, want_grads, kept_all), (got, got_entropy, got_grads, kept_chunked) = results.values()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_entropy, want_entropy, rtol=0, atol=1e-12)
    for (name, _), a, b in zip(model.named_parameters(), got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13, msg=name)
    assert kept_all and kept_chunked == (arch == "cohere")
    with torch.no_grad():  # the sync check's and the reference's path: chunked without checkpointing
        no_grad, _ = completion.completion_logprobs(model, *inputs, 0.8, top_k, top_p, lean=lean, chunk=CHUNK)
    torch.testing.assert_close(no_grad, want, rtol=0, atol=1e-12)


def test_learner_with_chunked_logprobs_steps_like_all_logits_at_once_fp64(tokenizer, synthetic_env,
                                                                          make_model):
    """The learner's own switch (`logprob_chunk`): the same gradient and metrics, old and reference logprobs
    included (two passes, KL)."""
    groups = make_groups(tokenizer, synthetic_env)
    results = []
    for chunk in (None, CHUNK):
        model = make_model(seed=5, dtype=torch.float64)
        cfg = LearnerConfig(lr=1e-3, kl_coef=0.1, passes=2, tis_cap=None, compile=False)
        learner = Learner(model, cfg, SamplingParams(max_new_tokens=16, temperature=0.7), 1)
        learner.logprob_chunk = chunk
        batch = learner.prepare(groups)
        learner.optimizer.zero_grad(set_to_none=True)
        metrics = learner.backward(batch)
        results.append((metrics, {n: p.grad for n, p in model.named_parameters()}))
    (want_metrics, want), (got_metrics, got) = results
    assert got_metrics == pytest.approx(want_metrics, rel=1e-10, abs=1e-14)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-13, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_elementwise_equals_eager_forward_and_backward(dtype):
    """torch.compile must work here (a failure would fall back to eager silently, and slower)."""
    torch.manual_seed(0)
    gate_up = torch.randn(37, 2 * 24, dtype=dtype, requires_grad=True)  # an odd row count: dynamic shapes
    dy = torch.randn(37, 24, dtype=dtype)
    ours = completion.swiglu(gate_up, compile=True)
    gate, up = gate_up.chunk(2, dim=-1)
    ref = F.silu(gate) * up
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, gate_up, dy)[0],
                               torch.autograd.grad(ref, gate_up, dy)[0])
    x = torch.randn(3, 37, 24, dtype=dtype, requires_grad=True)
    weight = torch.randn(24, dtype=dtype, requires_grad=True)
    ours, ref = completion.norm(x, weight, 1e-5, compile=True), F.rms_norm(x, (24,), weight, 1e-5)
    torch.testing.assert_close(ours, ref)
    dy = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, (x, weight), dy), torch.autograd.grad(ref, (x, weight), dy),
                    strict=True):
        torch.testing.assert_close(a, b)
    assert not completion._compile_failed


def test_learner_logprobs_of_equals_a_full_forward(tokenizer, make_model):
    model = make_model(seed=4)
    learner = Learner(model, LearnerConfig(lr=1e-3),
                      SamplingParams(max_new_tokens=8, temperature=0.7, top_k=20), 1)
    prompt = chat.prompt_ids(tokenizer, [{"role": "user", "content": "What is 4 + 4?"}])
    ids = [40, 41, 42, 43]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
    want = S.gather(S.processed_logprobs(logits, 0.7, 20), torch.tensor(ids))
    np.testing.assert_allclose(learner.logprobs_of(prompt, ids), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (2, 1.0), (0, 0.6)])
def test_inverse_cdf_sampling_follows_the_processed_distribution(top_k, top_p):
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, -3.0]]).expand(200_000, 5)
    generator = torch.Generator().manual_seed(1)
    tokens, logprobs = S.sample_token(logits, 0.9, top_k, top_p, generator)
    want = S.processed_logprobs(logits[:1], 0.9, top_k, top_p)[0].exp()
    freq = torch.bincount(tokens, minlength=5).double() / len(tokens)
    assert ((freq - want).abs() <= 4 * (want * (1 - want) / len(tokens)).sqrt() + 1e-12).all(), (freq, want)
    assert torch.isfinite(logprobs).all()  # a filtered-out token (-inf) is never sampled
    want = S.processed_logprobs(logits, 0.9, top_k, top_p).gather(-1, tokens[:, None])[:, 0]
    torch.testing.assert_close(logprobs, want)


def test_target_logprobs_fused_path_equals_the_log_softmax_path():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (3, 6))
    fused, fused_entropy = S.target_logprobs(logits, targets, 0.7)
    logp = S.processed_logprobs(logits, 0.7)
    torch.testing.assert_close(fused, S.gather(logp, targets), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused_entropy, S.entropy(logp.detach()), rtol=1e-12, atol=1e-12)
    (a,) = torch.autograd.grad(fused.sum(), logits)
    (b,) = torch.autograd.grad(S.gather(S.processed_logprobs(logits, 0.7), targets).sum(), logits)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bf16_engine_samples_near_the_fp32_policy_and_verifies_in_fp32(tokenizer, make_model):
    model = make_model(seed=6, preset="1.4m")
    fp32 = TorchEngine(model, tokenizer, seed=1)
    bf16 = TorchEngine(model, tokenizer, seed=1, precision="bf16")
    prompts = [chat.prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in ("What is 2 + 3?", "Hi")]
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0)
    diffs = []
    for prompt, group in zip(prompts, bf16.generate(prompts, 3, sampling), strict=True):
        for c in group:
            want = fp32.logprobs_of(prompt, c.token_ids, sampling)
            diffs += [abs(a - b) for a, b in zip(c.logprobs, want, strict=True)]
            assert bf16.logprobs_of(prompt, c.token_ids, sampling) == want  # the sync check decodes in fp32
    assert len(diffs) > 40 and max(diffs) < 0.5 and sum(diffs) / len(diffs) < 0.03 and max(diffs) > 0
    with pytest.raises(ValueError, match="precision"):
        TorchEngine(model, tokenizer, precision="fp16")


def test_prompt_sharing_gives_each_completion_its_prompts_context(tokenizer, make_model):
    """n completions of one prompt (one prefill, cache rows shared) equal n separate calls of that prompt,
    greedily."""
    model = make_model(seed=7)
    engine = TorchEngine(model, tokenizer)
    prompts = [chat.prompt_ids(tokenizer, [{"role": "user", "content": q}])
               for q in ("What is 12 + 30?", "Hi there")]
    greedy = SamplingParams(max_new_tokens=10, top_k=1, ignore_eos=True)
    shared = engine.generate(prompts, 3, greedy)
    for prompt, group in zip(prompts, shared, strict=True):
        alone = engine.generate([prompt], 1, greedy)[0][0]
        assert all(c.token_ids == alone.token_ids for c in group)
        assert all(math.isclose(a, b, abs_tol=1e-5)
                   for c in group for a, b in zip(c.logprobs, alone.logprobs, strict=True))


# chi-square critical values at p = 0.001 (the samples are seeded, so the test is deterministic; a wrong
# sampler of this size would exceed them by orders of magnitude)
CHI2_999 = {2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 7: 24.322}


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 4, 1.0), (1.3, 0, 0.8)])
def test_inverse_cdf_sampling_passes_a_chi_square_test(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(1, 8).mul(1.5).expand(100_000, 8)
    tokens, _ = S.sample_token(logits, temperature, top_k, top_p, torch.Generator().manual_seed(2))
    p = S.processed_logprobs(logits[:1].double(), temperature, top_k, top_p)[0].exp()
    counts = torch.bincount(tokens, minlength=8).double()
    assert (counts[p == 0] == 0).all()  # a filtered-out token is never drawn
    kept = p > 0
    expected = p[kept] * len(tokens)
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_999[int(kept.sum()) - 1], (chi2, counts, expected)


def test_inverse_cdf_maps_each_uniform_to_the_token_whose_interval_holds_it():
    """Exact: replaying the generator's uniforms, each draw is the token i with cdf[i-1] <= u < cdf[i]
    (fp64 cdf of the true probabilities), zero-mass tokens (first, middle, last) never included."""
    probs = torch.tensor([0.0, 0.1, 0.25, 0.0, 0.3, 0.35, 0.0], dtype=torch.float64)
    logp = probs.log().float()[None].expand(50_000, 7)
    tokens = S.sample(logp, torch.Generator().manual_seed(5))
    u = torch.rand((50_000, 1), generator=torch.Generator().manual_seed(5)).double()[:, 0]  # the same draws
    cdf = probs.cumsum(0)
    want = torch.searchsorted(cdf, u, right=True)
    # fp32 rounding may go either way near an edge
    near_edge = (u[:, None] - cdf[None]).abs().min(dim=1).values < 1e-6
    assert near_edge.sum() < 10
    assert torch.equal(tokens[~near_edge], want[~near_edge])
    assert set(tokens.tolist()) == {1, 2, 4, 5}


@pytest.mark.parametrize("index", [[0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 0, 1, 2, 2, 2], [2, 2, 0, 0, 1, 1]])
def test_per_row_equals_indexing_forward_and_backward(index):
    """Equal consecutive groups take the expand path, any other index plain indexing: the same values and
    gradients."""
    t = torch.randn(3, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    index = torch.tensor(index)
    weights = torch.randn(len(index), 2, 5, 4, dtype=torch.float64)
    group = completion.group_size(index, 3)
    assert (group is not None) == (index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2])
    ours = completion.per_row(t, index, group)
    (grad,) = torch.autograd.grad((ours * weights).sum(), t)
    (expected,) = torch.autograd.grad((t[index] * weights).sum(), t)
    assert torch.equal(ours, t[index]) and torch.allclose(grad, expected, rtol=0, atol=1e-12)
