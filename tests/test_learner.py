"""The Learner: micro-batching is exact, TIS / clipping / multi-pass behave as the math says, SFT masks; a
PretrainedLearner picks its device and resumes its state."""

import math
import random

import pytest
import torch

from answerkey import chat
from answerkey.config import LearnerConfig
from answerkey.envs import Trajectory
from answerkey.learner.batch import completion_values
from answerkey.learner.learner import Learner, PretrainedLearner, lr_factor
from answerkey.rewards import Score, Status
from answerkey.rollout.engine import SamplingParams

SAMPLING = SamplingParams(max_new_tokens=16, temperature=0.9)


def make_groups(tokenizer, env, rewards, seed=0, truncated=(), near_policy=False):
    """P groups of G trajectories with prompts of different lengths and completions of 3..15 tokens.

    Engine logprobs are -2.0, or with `near_policy` drawn near a fresh tiny policy's (~ -6), so that
    TIS ratios fall on either side of 1."""
    rng = random.Random(seed)
    problems = env.problems("train")
    groups = []
    for p, row in enumerate(rewards):
        prompt = chat.prompt_ids(tokenizer, problems[p * 7].messages())
        group = []
        for g, reward in enumerate(row):
            n = 3 + (p * len(row) + g) * 5 % 13
            ids = [rng.randrange(10, len(tokenizer)) for _ in range(n)]
            rollout = [-6.2 + 0.4 * rng.random() for _ in range(n)] if near_policy else [-2.0] * n
            finish = "length" if (p, g) in truncated else "stop"
            status = Status.correct if reward else Status.wrong
            group.append(Trajectory(prompt, ids, [1] * n, rollout, Score(reward, status), finish))
        groups.append(group)
    return groups


def learner_for(model, **overrides):
    cfg = LearnerConfig(**({"lr": 1e-3} | overrides))
    return Learner(model, cfg, SAMPLING, total_steps=10)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


REWARDS = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]]


@pytest.mark.parametrize("loss_agg", ["token-mean", "sequence-mean", "dr-grpo"])
@pytest.mark.parametrize("extras", [{}, {"kl_coef": 0.1, "passes": 2, "mask_truncated": True},
                                    {"kl_coef": 0.1, "kl_estimator": "k1"},
                                    {"kl_coef": 0.1, "kl_estimator": "k2"}])
def test_micro_batched_gradient_equals_full_batch_gradient_fp64(tokenizer, synthetic_env, make_model,
                                                                loss_agg, extras):
    groups = make_groups(tokenizer, synthetic_env, REWARDS, truncated={(0, 1)})
    results = []
    for budget in (10**6, 120):
        model = make_model(dtype=torch.float64)
        learner = learner_for(model, loss_agg=loss_agg, micro_batch_tokens=budget, **extras)
        batch = learner.prepare(groups)
        micro = batch.micro_batches(budget)
        if budget == 120:
            sizes = [mb.num_tokens for mb in micro]
            assert len(micro) >= 3 and len(set(sizes)) > 1, sizes
        else:
            assert len(micro) == 1
        learner.backward(batch)
        results.append(grads(model))
    full, split = results
    assert full.keys() == split.keys() and full
    for name in full:
        torch.testing.assert_close(split[name], full[name], rtol=1e-10, atol=1e-13, msg=name)


def test_uniform_groups_are_dropped_and_an_all_uniform_step_is_skipped_loudly(tokenizer, synthetic_env,
                                                                              make_model):
    model = make_model()
    learner = learner_for(model)
    metrics = learner.step(make_groups(tokenizer, synthetic_env, REWARDS))
    assert metrics["learner/groups_kept"] == 3 and metrics["learner/groups_uniform"] == 1
    assert metrics["learner/skipped"] == 0 and metrics["learner/grad_norm"] > 0
    before = {n: p.clone() for n, p in model.named_parameters()}
    metrics = learner.step(make_groups(tokenizer, synthetic_env, [[1.0, 1.0], [0.0, 0.0]]))
    assert metrics["learner/skipped"] == 1 and metrics["learner/loss_tokens"] == 0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_masking_truncated_completions_removes_their_tokens(tokenizer, synthetic_env, make_model):
    groups = make_groups(tokenizer, synthetic_env, REWARDS[:2], truncated={(0, 0), (1, 3)})
    keep = learner_for(make_model()).prepare(groups)
    drop = learner_for(make_model(), mask_truncated=True).prepare(groups)
    cut = len(groups[0][0].completion_ids) + len(groups[1][3].completion_ids)
    assert drop.norm.tokens == keep.norm.tokens - cut
    assert drop.metrics["learner/truncated_fraction"] == 2 / 8


def true_logprobs(learner, batch):
    """The learner's own logprobs of every row's completion, in batch order."""
    out = [None] * len(batch.rows)
    with torch.no_grad():
        for mb in batch.micro_batches(10**6):
            lp, _ = learner.logprobs(learner.model, mb)
            for i, v in zip(mb.index, completion_values(mb, lp), strict=True):
                out[i] = v
    return out


@pytest.mark.parametrize("offset, scale, clipped_fraction",
                         [(0.0, 1.0, 0.0), (math.log(1.5), 1.5, 0.0), (math.log(3.0), 2.0, 1.0)])
def test_tis_weights_the_gradient_by_the_truncated_ratio(tokenizer, synthetic_env, make_model, offset, scale,
                                                         clipped_fraction):
    """rollout logprob = learner logprob - offset -> ratio exp(offset), truncated at the cap of 2."""
    groups = make_groups(tokenizer, synthetic_env, REWARDS)
    baseline_model, model = make_model(dtype=torch.float64), make_model(dtype=torch.float64)
    baseline = learner_for(baseline_model, tis_cap=None)
    baseline.backward(baseline.prepare(groups))
    learner = learner_for(model, tis_cap=2.0)
    batch = learner.prepare(groups)
    for row, lp in zip(batch.rows, true_logprobs(learner, batch), strict=True):
        row.rollout_logprobs = (lp - offset).tolist()
    metrics = learner.backward(batch)
    assert metrics["learner/tis_clipped_fraction"] == pytest.approx(clipped_fraction)
    assert metrics["learner/tis_ratio"] == pytest.approx(math.exp(offset))
    want = grads(baseline_model)
    for name, grad in grads(model).items():  # Llama's RMSNorm computes in fp32 even in an fp64 model
        torch.testing.assert_close(grad, scale * want[name], rtol=1e-4, atol=1e-7)


def test_clipping_through_injected_old_logprobs(tokenizer, synthetic_env, make_model):
    """old = current + log 2 -> ratio 0.5 < 1 - clip_low: A > 0 rows train at half weight, A < 0 rows are
    clipped."""
    groups = make_groups(tokenizer, synthetic_env, REWARDS)
    ref_model, model = make_model(dtype=torch.float64), make_model(dtype=torch.float64)
    reference = learner_for(ref_model, tis_cap=None)
    ref_batch = reference.prepare(groups)
    for row in ref_batch.rows:
        row.advantage = max(row.advantage, 0.0)  # only the positive-advantage rows contribute
    reference.backward(ref_batch)
    learner = learner_for(model, tis_cap=None)
    batch = learner.prepare(groups)
    for row, lp in zip(batch.rows, true_logprobs(learner, batch), strict=True):
        row.old_logprobs = lp + math.log(2.0)
    metrics = learner.backward(batch)
    negative = sum(len(r.loss_mask) for r in batch.rows if r.advantage < 0)
    assert metrics["learner/clip_fraction"] == pytest.approx(negative / batch.norm.tokens)
    assert metrics["learner/ratio"] == pytest.approx(0.5)
    want = grads(ref_model)
    for name, grad in grads(model).items():  # Llama's RMSNorm computes in fp32 even in an fp64 model
        torch.testing.assert_close(grad, 0.5 * want[name], rtol=1e-4, atol=1e-7)


def test_multi_pass_ratio_is_against_the_pre_update_logprobs(tokenizer, synthetic_env, make_model):
    groups = make_groups(tokenizer, synthetic_env, REWARDS)
    learner = learner_for(make_model(dtype=torch.float64), passes=2, lr=1e-2, tis_cap=None)
    batch = learner.prepare(groups)
    before = true_logprobs(learner, batch)
    for row, lp in zip(batch.rows, before, strict=True):
        torch.testing.assert_close(row.old_logprobs, lp)  # filled once, before any update
    first = learner.backward(batch)
    learner.optimizer_step()
    second = learner.backward(batch)
    assert first["learner/ratio"] == pytest.approx(1.0, abs=1e-12)
    assert abs(second["learner/ratio"] - 1.0) > 1e-3  # the policy moved; old logprobs did not
    for row, lp in zip(batch.rows, before, strict=True):
        torch.testing.assert_close(row.old_logprobs, lp)
    metrics = learner_for(make_model(), passes=3).step(groups)
    assert metrics["learner/lr"] > 0 and metrics["learner/clip_fraction"] >= 0


def test_kl_is_zero_before_the_first_update_and_positive_after(tokenizer, synthetic_env, make_model):
    groups = make_groups(tokenizer, synthetic_env, REWARDS)
    learner = learner_for(make_model(), kl_coef=0.5, lr=1e-2)
    first = learner.step(groups)
    second = learner.step(groups)
    assert first["learner/kl"] == pytest.approx(0.0, abs=1e-7)
    assert second["learner/kl"] > 1e-5


def test_sft_step_trains_only_assistant_tokens(tokenizer, synthetic_env, make_model):
    model = make_model(dtype=torch.float64)
    learner = learner_for(model, lr=3e-3)
    answer = {"role": "assistant", "content": "1 + 2 = 3.\n#### 3"}
    messages = synthetic_env.problems("train")[0].messages() + [answer]
    enc = chat.encode(tokenizer, messages)
    with torch.no_grad():
        logp = model(torch.tensor([enc.ids])).logits[0, :-1].log_softmax(-1)
        nll = -logp.gather(-1, torch.tensor(enc.ids[1:])[:, None])[:, 0]
        mask = torch.tensor(enc.mask[1:], dtype=torch.float64)
        expected = float((nll * mask).sum() / mask.sum())
    metrics = learner.sft_step([enc])
    assert metrics["sft/loss"] == pytest.approx(expected, rel=1e-9)
    assert metrics["sft/tokens"] == sum(enc.mask[1:])
    losses = [learner.sft_step([enc])["sft/loss"] for _ in range(20)]
    assert losses[-1] < 0.5 * expected
    with pytest.raises(ValueError, match="mask is all zeros"):
        learner.sft_step([chat.Encoded(enc.ids, [0] * len(enc.ids))])


def test_pretrained_learner_trains_on_the_device_it_is_given_and_resumes_its_state(tokenizer, synthetic_env,
                                                                                  make_model, tmp_path):
    """`device=None` is cuda when torch sees a GPU, else cpu (here); the KL reference from another path goes
    there too; a checkpoint of its optimizer, schedule and RNG loads back into a fresh one (a CUDA RNG state
    only on a GPU: tests/gpu/test_learner_cuda.py)."""
    for name, seed in (("policy", 0), ("initial", 1)):
        make_model(seed=seed).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    cfg = LearnerConfig(lr=1e-3, kl_coef=0.1, compile=False)
    initial = str(tmp_path / "initial")
    learner = PretrainedLearner(str(tmp_path / "policy"), cfg, SAMPLING, 4, reference_path=initial)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert learner.device.type == want
    assert {p.device.type for m in (learner.model, learner.reference) for p in m.parameters()} == {want}
    assert PretrainedLearner(str(tmp_path / "policy"), cfg, SAMPLING, 4, device="cpu").device.type == "cpu"
    metrics = learner.step(make_groups(tokenizer, synthetic_env, REWARDS))
    assert metrics["learner/skipped"] == 0 and metrics["learner/kl"] > 0
    path = learner.save_checkpoint(str(tmp_path / "ckpt"), 1, {}, "{}", keep=1)
    state = learner.state_dict()
    assert ("cuda_rng" in state) == (want == "cuda")
    resumed = PretrainedLearner(f"{path}/model", cfg, SAMPLING, 4, reference_path=initial)
    resumed.resume(path)
    assert resumed.optimizer_steps == 1 and resumed.scheduler.get_last_lr() == learner.scheduler.get_last_lr()
    assert torch.equal(torch.get_rng_state(), state["torch_rng"])
    for (name, a), b in zip(resumed.optimizer.state_dict()["state"].items(),
                            learner.optimizer.state_dict()["state"].values(), strict=True):
        assert a["exp_avg"].device.type == want and torch.equal(a["exp_avg"], b["exp_avg"]), name


@pytest.mark.parametrize(
    "step, warmup, total, schedule, expected",
    [
        (0, 4, 100, "cosine", 0.25),  # warmup never starts at 0: the first step is not a no-op
        (3, 4, 100, "cosine", 1.0),
        (4, 4, 100, "cosine", 1.0),
        (52, 4, 100, "cosine", 0.1 + 0.9 * 0.5),  # halfway through the decay
        (100, 4, 100, "cosine", 0.1),
        (50, 0, 100, "constant", 1.0),
    ],
)
def test_lr_schedule(step, warmup, total, schedule, expected):
    assert lr_factor(step, warmup, total, schedule, 0.1) == pytest.approx(expected)


@pytest.mark.parametrize("extras", [{}, {"kl_coef": 0.1, "passes": 2, "tis_cap": 2.0}])
def test_a_step_with_top_k_and_top_p_stays_finite_and_moves_the_policy(tokenizer, synthetic_env, make_model,
                                                                        extras):
    """Tokens outside the learner's top-k 20 / top-p 0.9 support have logprob -inf: they are counted and left
    out of the loss, never turning the ratio, the KL or the gradient into NaN."""
    groups = make_groups(tokenizer, synthetic_env, REWARDS)  # random tokens: many fall outside the support
    model = make_model(seed=4)
    cfg = LearnerConfig(lr=1e-3, **extras)
    learner = Learner(model, cfg, SamplingParams(max_new_tokens=16, temperature=0.9, top_k=20, top_p=0.9),
                      total_steps=10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = learner.step(groups)
    assert metrics["learner/outside_support"] > 0
    assert math.isfinite(metrics["learner/loss"]) and metrics["learner/nonfinite_grad"] == 0.0
    assert metrics["learner/grad_norm"] > 0
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_dr_grpo_divides_by_every_generated_sequence_whatever_is_dropped(tokenizer, synthetic_env):
    from answerkey.learner.batch import make_batch

    groups = make_groups(tokenizer, synthetic_env, REWARDS, truncated={(0, 1)})  # group 2 is uniform
    kept = make_batch(groups, True, drop_uniform_groups=True, mask_truncated=True, max_new_tokens=16).norm
    full = make_batch(groups, True, drop_uniform_groups=False, mask_truncated=False, max_new_tokens=16).norm
    assert kept.sequences == 11 and full.sequences == 16  # 1 uniform group of 4 dropped, 1 truncated masked
    assert kept.generated == full.generated == 4 * 4  # P x G, the constant Dr.GRPO divides by (x 16)


def test_overlong_shaping_changes_the_advantages_and_shows_in_the_metrics(tokenizer, synthetic_env):
    from answerkey.learner.batch import make_batch

    groups = make_groups(tokenizer, synthetic_env, REWARDS)  # completions of 3..15 tokens
    plain = make_batch(groups, True, drop_uniform_groups=False, mask_truncated=False, max_new_tokens=16)
    shaped = make_batch(groups, True, drop_uniform_groups=False, mask_truncated=False, max_new_tokens=16,
                        overlong=(8, 1.0))
    lengths = [len(t.completion_ids) for g in groups for t in g]
    want = [-min(max((n - 8) / 8, 0.0), 1.0) for n in lengths]
    assert shaped.metrics["learner/overlong_penalty"] == pytest.approx(sum(want) / len(want))
    assert shaped.metrics["learner/overlong_fraction"] == pytest.approx(sum(w < 0 for w in want) / len(want))
    assert "learner/overlong_penalty" not in plain.metrics
    # the uniform group (all rewards 1) is no longer uniform once its long completions lose reward
    assert [r.advantage for r in plain.rows[8:12]] == [0.0] * 4
    assert any(r.advantage != 0.0 for r in shaped.rows[8:12])


def test_an_overlong_buffer_as_long_as_the_budget_is_refused_naming_both_keys(make_model):
    with pytest.raises(ValueError, match=r"learner.overlong_buffer \(16\) must be smaller than "
                                         r"rollout.max_new_tokens \(16\)"):
        learner_for(make_model(), overlong_buffer=16)


@pytest.mark.parametrize("loss_agg", ["token-mean", "sequence-mean", "dr-grpo"])
def test_each_mini_batchs_micro_batched_gradient_equals_its_full_gradient_fp64(tokenizer, synthetic_env,
                                                                              make_model, loss_agg):
    groups = make_groups(tokenizer, synthetic_env, REWARDS, truncated={(0, 1)})
    results = []
    for budget in (10**6, 60):
        model = make_model(dtype=torch.float64)
        learner = learner_for(model, loss_agg=loss_agg, micro_batch_tokens=budget, mini_batches=2)
        parts = learner.mini_batches(learner.prepare(groups))
        assert len(parts) == 2 and len(parts[0].micro_batches(budget)) == (1 if budget == 10**6 else 3)
        assert parts[0].norm.generated == parts[1].norm.generated == 8  # 16 generated / 2
        learner.backward(parts[0])
        results.append(grads(model))
    full, split = results
    assert full.keys() == split.keys() and full
    for name in full:
        torch.testing.assert_close(split[name], full[name], rtol=1e-10, atol=1e-13, msg=name)


def test_mini_batches_take_several_optimizer_steps_and_the_clip_acts(tokenizer, synthetic_env, make_model):
    groups = make_groups(tokenizer, synthetic_env, REWARDS)
    learner = learner_for(make_model(), mini_batches=3, lr=3e-2, clip_low=0.01, clip_high=0.01)
    metrics = learner.step(groups)
    assert learner.optimizer_steps == 3
    clips = [metrics[f"learner/clip_fraction/mb{i}"] for i in range(3)]
    assert clips[0] == 0.0 and max(clips[1:]) > 0, clips  # the first is on-policy (ratio 1); later ones not
    assert metrics["learner/clip_fraction"] == pytest.approx(sum(clips) / 3)
    # the shuffle is seeded by the optimizer step count: learners at the same count split alike (a resumed run
    # too), the next step splits differently
    first, second = (learner_for(make_model(), mini_batches=3) for _ in range(2))
    split = [[[r.ids for r in p.rows] for p in lr.mini_batches(lr.prepare(groups))] for lr in (first, second)]
    assert split[0] == split[1]
    second.optimizer_steps = 1
    assert [[r.ids for r in p.rows] for p in second.mini_batches(second.prepare(groups))] != split[0]
