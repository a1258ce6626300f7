"""Prompt sharing against the plain per-row computation it replaces.

The learner runs each distinct prompt of a micro-batch once (answerkey/model/completion.py) and the engine
caches a prompt's keys and values once for its n completions (answerkey/model/decode.py). Here both are
checked against one full, unpadded forward per sequence: the learner's logprobs, loss and gradients in
fp64 for every loss aggregation and with several micro-batches, the engine's tokens and logprobs in fp32.
"""


import pytest
import torch

from answerkey import chat
from answerkey.config import LearnerConfig
from answerkey.envs import Trajectory
from answerkey.learner import grpo
from answerkey.learner.batch import collate, completion_values
from answerkey.learner.learner import Learner
from answerkey.rewards import Score, Status
from answerkey.rollout import sampling as S
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine
from tests.test_learner import REWARDS
from tests.test_learner import make_groups as learner_groups

SAMPLING = SamplingParams(max_new_tokens=16, temperature=0.9)


def make_groups(tokenizer, env, seed=0):
    """P groups of G trajectories: prompts of different lengths, completions of 3..15 tokens, one
    truncated."""
    return learner_groups(tokenizer, env, REWARDS, seed, truncated={(0, 1)}, near_policy=True)


def hf_logprobs(model, row, sampling) -> torch.Tensor:
    """Processed logprobs of a row's completion from HF's forward over its own, unpadded sequence. (Tc,)"""
    ids = torch.tensor([row.ids])
    logits = model(input_ids=ids).logits[0, row.prompt_len - 1 : -1]
    return S.gather(S.processed_logprobs(logits, sampling.temperature, sampling.top_k, sampling.top_p),
                    ids[0, row.prompt_len :])


def row_logprobs(learner, model, row) -> torch.Tensor:
    """The learner's own forward (lean or HF) over one row alone: one prompt, one completion, no padding.
    (Tc,)"""
    logprobs, _ = learner.logprobs(model, collate([row], [0]))
    return logprobs[0]


def per_row_loss(learner, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The batch loss the textbook way, one sequence at a time; and each row's logprobs (detached)."""
    cfg, loss, values = learner.cfg, 0.0, []
    for row in batch.rows:
        logprobs = row_logprobs(learner, learner.model, row)
        # one pass: the ratio is 1; several: the policy before the first update is this one
        old = logprobs.detach()
        adv = torch.tensor(row.advantage, dtype=logprobs.dtype)
        pg, _ = grpo.clipped_surrogate(logprobs, old, adv, cfg.clip_low, cfg.clip_high)
        if cfg.tis_cap is not None:
            pg = pg * grpo.tis_weights(old, torch.tensor(row.rollout_logprobs, dtype=old.dtype),
                                       cfg.tis_cap)[0]
        terms = pg
        if learner.reference is not None:
            with torch.no_grad():
                ref = row_logprobs(learner, learner.reference, row)
            torch.testing.assert_close(row.ref_logprobs, ref, rtol=0, atol=1e-12)
            terms = pg + cfg.kl_coef * grpo.kl(logprobs, ref, cfg.kl_estimator)
        if row.old_logprobs is not None:
            torch.testing.assert_close(row.old_logprobs, old, rtol=0, atol=1e-12)
        mask = torch.tensor(row.loss_mask, dtype=logprobs.dtype)
        loss = loss + grpo.aggregate(terms[None], mask[None], cfg.loss_agg, batch.norm)
        values.append(old)
    return loss, values


@pytest.mark.parametrize("lean", [True, False])  # the lean Llama forward; HF's forward on left-padded prompts
@pytest.mark.parametrize("loss_agg", ["token-mean", "sequence-mean", "dr-grpo"])
@pytest.mark.parametrize("extras", [{},
                                    {"kl_coef": 0.1, "passes": 2, "mask_truncated": True, "tis_cap": 1.05}])
def test_shared_prompt_micro_batches_equal_a_forward_per_row_fp64(tokenizer, synthetic_env, make_model, lean,
                                                                  loss_agg, extras):
    groups = make_groups(tokenizer, synthetic_env)
    model = make_model(seed=1, dtype=torch.float64)
    cfg = LearnerConfig(lr=1e-3, loss_agg=loss_agg, micro_batch_tokens=120, **extras)
    learner = Learner(model, cfg, SAMPLING, total_steps=10, lean=lean)
    batch = learner.prepare(groups)
    micro = batch.micro_batches(cfg.micro_batch_tokens)
    assert len(micro) >= 3, [mb.num_tokens for mb in micro]
    # some prompt runs once for several rows
    assert any(mb.prompt_ids.shape[0] < mb.targets.shape[0] for mb in micro)
    assert any(mb.prompt_ids.shape[0] > 1 for mb in micro)  # and some micro-batch holds several prompts

    want_loss, want_values = per_row_loss(learner, batch)
    # one row alone equals HF's own forward: exactly for lean=False; for the lean forward to the fp32 rounding
    # that HF's RMSNorm does even in an fp64 model (the lean one stays in fp64)
    for row, values in zip(batch.rows, want_values, strict=True):
        torch.testing.assert_close(values, hf_logprobs(model, row, SAMPLING).detach(), rtol=0,
                                   atol=1e-7 if lean else 1e-12)
    params = [p for p in model.parameters()]
    want_grads = torch.autograd.grad(want_loss, params, allow_unused=True)
    for mb in micro:
        with torch.no_grad():
            logprobs, _ = learner.logprobs(model, mb)
        for i, values in zip(mb.index, completion_values(mb, logprobs), strict=True):
            torch.testing.assert_close(values, want_values[i], rtol=0, atol=1e-12)
    metrics = learner.backward(batch)
    if "tis_cap" in extras:
        assert 0 < metrics["learner/tis_clipped_fraction"] < 1  # the cap binds on some tokens, not all
    assert metrics["learner/loss"] == pytest.approx(float(want_loss.detach()), rel=1e-10, abs=1e-14)
    checked = 0
    for (name, p), want in zip(model.named_parameters(), want_grads, strict=True):
        if want is None:  # (no parameter is unused in these models; kept for clarity of the failure)
            assert p.grad is None or not p.grad.any(), name
            continue
        torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-13, msg=name)
        checked += int(want.abs().sum() > 0)
    assert checked >= len(params) - 1  # every weight but possibly an untouched one got a real gradient


def test_rollout_logprobs_equal_the_learners_fp32(tokenizer, synthetic_env, make_model):
    """What TIS divides by: the engine's logprobs (shared-prompt KV) and the learner's (shared-prompt
    forward) agree to 1e-5 in fp32 on this fresh model (the driver's sync check allows 1e-4: trained
    policies round further)."""
    model = make_model(seed=3, preset="1.4m")
    sampling = SamplingParams(max_new_tokens=24, temperature=0.9)
    prompts = [chat.prompt_ids(tokenizer, synthetic_env.problems("train")[p].messages()) for p in (0, 3, 9)]
    groups = TorchEngine(model, tokenizer, seed=2).generate(prompts, 4, sampling)
    trajectories = [[Trajectory(prompt, c.token_ids, [1] * len(c.token_ids), c.logprobs,
                                Score(float(g % 2), Status.correct if g % 2 else Status.wrong),
                                c.finish_reason)
                     for g, c in enumerate(group)] for prompt, group in zip(prompts, groups, strict=True)]
    learner = Learner(model, LearnerConfig(lr=1e-3), sampling, total_steps=1)
    batch = learner.prepare(trajectories)
    diffs = []
    for mb in batch.micro_batches(learner.cfg.micro_batch_tokens):
        with torch.no_grad():
            logprobs, _ = learner.logprobs(model, mb)
        for i, values in zip(mb.index, completion_values(mb, logprobs), strict=True):
            rollout = torch.tensor(batch.rows[i].rollout_logprobs, dtype=torch.float64)
            diffs += (values.double() - rollout).abs().tolist()
    assert len(diffs) > 100 and max(diffs) < 1e-5, max(diffs)


def engine_prompts(tokenizer):
    texts = ["What is 2 + 3?",
             "Emily buys 3 apples and 2 oranges. Each orange costs $2 and the total is $13.", "Hi"]
    ids = [chat.prompt_ids(tokenizer, [{"role": "user", "content": t}]) for t in texts]
    assert len({len(i) for i in ids}) == len(ids)  # different lengths: left padding is exercised
    return ids


@pytest.mark.parametrize("preset", ["tiny", "1.4m"])  # tiny: grouped-query attention (4 heads, 2 KV heads)
@pytest.mark.parametrize("sampling", [
    SamplingParams(max_new_tokens=20, temperature=1.0, ignore_eos=True),
    SamplingParams(max_new_tokens=20, temperature=0.8, top_k=30, top_p=0.9),
])
def test_shared_prompt_kv_equals_unshared_rows_and_a_full_forward(tokenizer, make_model, preset, sampling):
    """n rows per prompt with the prompt's KV cached once give the tokens and logprobs of n separate
    copies of the prompt (each with its own cache) and of HF's forward, and logprobs within 1e-4 of one
    full forward per row."""
    model = make_model(seed=8, preset=preset)
    prompts, n = engine_prompts(tokenizer), 4
    shared = [c for g in TorchEngine(model, tokenizer, seed=11).generate(prompts, n, sampling) for c in g]
    copies = [p for p in prompts for _ in range(n)]  # row r continues prompt r // n, as in the shared call
    unshared = [g[0] for g in TorchEngine(model, tokenizer, seed=11).generate(copies, 1, sampling)]
    hf_engine = TorchEngine(model, tokenizer, seed=11, lean=False)
    hf = [c for g in hf_engine.generate(prompts, n, sampling) for c in g]
    assert len({tuple(c.token_ids) for c in shared}) > n  # the rows really sampled different completions
    checked = 0
    for prompt, a, b, c in zip(copies, shared, unshared, hf, strict=True):
        assert a.token_ids == b.token_ids == c.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-5
        assert max(abs(x - y) for x, y in zip(a.logprobs, c.logprobs, strict=True)) < 1e-5
        with torch.no_grad():
            full = torch.tensor([prompt + a.token_ids])
            logits = model(full).logits[0, len(prompt) - 1 : -1]
        want = S.gather(S.processed_logprobs(logits, sampling.temperature, sampling.top_k, sampling.top_p),
                        full[0, len(prompt) :])
        assert (torch.tensor(a.logprobs) - want).abs().max() < 1e-4
        checked += len(a.token_ids)
    assert checked > 100


@pytest.mark.parametrize("n", [1, 4])
def test_bf16_rollout_stays_near_the_fp32_policy(tokenizer, make_model, n):
    """rollout.precision = bf16: the sampled tokens' logprobs stay within bf16 rounding of the fp32 full
    forward."""
    model = make_model(seed=9, preset="1.4m")
    engine = TorchEngine(model, tokenizer, seed=4, precision="bf16")
    prompts = engine_prompts(tokenizer)
    sampling = SamplingParams(max_new_tokens=24, temperature=1.0, ignore_eos=True)
    diffs = []
    for prompt, group in zip(prompts, engine.generate(prompts, n, sampling), strict=True):
        for c in group:
            with torch.no_grad():
                full = torch.tensor([prompt + c.token_ids])
                want = S.gather(S.processed_logprobs(model(full).logits[0, len(prompt) - 1 : -1]),
                                full[0, len(prompt) :])
            diffs += (torch.tensor(c.logprobs) - want).abs().tolist()
    assert len(diffs) == len(prompts) * n * 24
    mean = sum(diffs) / len(diffs)
    # bf16 differs (it is not fp32), but only by rounding
    assert 0 < mean < 0.03 and max(diffs) < 0.5, (mean, max(diffs))
