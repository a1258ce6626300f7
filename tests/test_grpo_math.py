"""GRPO math pinned against hand-computed numbers (worked out in the comments)."""

import math

import pytest
import torch

from answerkey.learner import grpo

T = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731


@pytest.mark.parametrize(
    "rewards, scale_by_std, expected",
    [
        # mean 0.5; unbiased std sqrt((4 * 0.25) / 3) = 0.57735; 0.5 / 0.57735 = 0.866025
        ([[1, 0, 0, 1]], True, [[0.866025, -0.866025, -0.866025, 0.866025]]),
        ([[1, 0, 0, 1]], False, [[0.5, -0.5, -0.5, 0.5]]),
        # mean 0.75; std sqrt((3 * 0.5625 + 5.0625) / 3) = 1.5
        ([[0, 0, 0, 3]], True, [[-0.5, -0.5, -0.5, 1.5]]),
        ([[1, 1, 1, 1]], True, [[0, 0, 0, 0]]),  # a uniform group has zero advantage, not NaN
        # two groups, each normalized on its own: std of [1, 0] is 0.7071, of [2, 4] is 1.4142
        ([[1, 0], [2, 4]], True, [[0.707107, -0.707107], [-0.707107, 0.707107]]),
        ([[1, 0], [2, 4]], False, [[0.5, -0.5], [-1, 1]]),
    ],
)
def test_group_advantages(rewards, scale_by_std, expected):
    got = grpo.group_advantages(T(rewards), scale_by_std)
    assert torch.allclose(got, T(expected), atol=1e-5)


def test_group_of_one_is_rejected():
    with pytest.raises(ValueError, match="G >= 2"):
        grpo.group_advantages(T([[1.0], [0.0]]))


def test_uniform_groups():
    assert grpo.uniform_groups(T([[1, 1], [0, 1], [0, 0]])).tolist() == [True, False, True]


@pytest.mark.parametrize(
    "ratio, advantage, loss, clipped",
    [
        (1.0, 2.0, -2.0, False),
        (1.5, 1.0, -1.28, True),  # above 1 + clip_high with A > 0: clipped, no gradient
        (1.5, -1.0, 1.5, False),  # above 1 + clip_high with A < 0: the unclipped (worse) term is kept
        (0.5, 1.0, -0.5, False),  # below 1 - clip_low with A > 0: unclipped
        (0.5, -1.0, 0.8, True),  # below 1 - clip_low with A < 0: clipped at 0.8
        (1.2, 1.0, -1.2, False),  # inside the asymmetric band [0.8, 1.28]
    ],
)
def test_clipped_surrogate(ratio, advantage, loss, clipped):
    old = T([[-1.0]])
    got, was_clipped = grpo.clipped_surrogate(old + math.log(ratio), old, T([[advantage]]), clip_low=0.2,
                                              clip_high=0.28)
    assert got.item() == pytest.approx(loss)
    assert was_clipped.item() == clipped


def test_clipped_surrogate_gradient_is_zero_when_clipped_and_scaled_by_ratio_otherwise():
    logprobs = T([[math.log(1.5), math.log(1.5)]]).requires_grad_()
    loss, _ = grpo.clipped_surrogate(logprobs, T([[0.0, 0.0]]), T([[1.0, -1.0]]), 0.2, 0.28)
    loss.sum().backward()
    # token 0: clipped -> 0; token 1: d/dlp [-(ratio * -1)] = ratio = 1.5
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, 1.5])


@pytest.mark.parametrize(("estimator", "expected"), [
    ("k1", math.log(2)),  # log 0.5 - log 0.25
    ("k2", 0.5 * math.log(2) ** 2),  # 0.240227
    ("k3", 0.5 - math.log(0.5) - 1),  # exp(log 0.5) - log 0.5 - 1 = 0.193147
])
def test_kl_estimators_by_hand(estimator, expected):
    got = grpo.kl(T([math.log(0.5)]), T([math.log(0.25)]), estimator).item()
    assert got == pytest.approx(expected, abs=1e-12)
    assert grpo.kl(T([-2.0]), T([-2.0]), estimator).item() == 0.0


def test_an_unknown_kl_estimator_is_refused():
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        grpo.kl(T([0.0]), T([0.0]), "k4")


def test_tis_weights_truncate_at_the_cap_and_carry_no_gradient():
    old = T([0.0, 0.0, 0.0]).requires_grad_()
    weights, ratio = grpo.tis_weights(old, T([-math.log(1.5), -math.log(3.0), math.log(2.0)]), cap=2.0)
    assert weights.tolist() == pytest.approx([1.5, 2.0, 0.5])
    assert ratio.tolist() == pytest.approx([1.5, 3.0, 0.5])
    assert not weights.requires_grad


# per-token values x and mask: masked sum = 1 + 2 + 4 = 7 over 3 tokens in 2 sequences
X, MASK = T([[1, 2, 3], [4, 5, 6]]), T([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 7 / 3),
        ("sequence-mean", ((1 + 2) / 2 + 4 / 1) / 2),  # 2.75
        ("dr-grpo", 7 / (5 * 4)),  # constant: all 5 sequences generated x max_new_tokens (4), not the 2 kept
    ],
)
def test_aggregate(mode, expected):
    norm = grpo.Normalizer(tokens=3, sequences=2, max_new_tokens=4, generated=5)
    assert grpo.aggregate(X, MASK, mode, norm).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token-mean", "sequence-mean", "dr-grpo"])
def test_aggregate_over_split_rows_adds_up_to_the_whole(mode):
    norm = grpo.Normalizer(tokens=3, sequences=2, max_new_tokens=4, generated=5)
    whole = grpo.aggregate(X, MASK, mode, norm)
    parts = grpo.aggregate(X[:1], MASK[:1], mode, norm) + grpo.aggregate(X[1:], MASK[1:], mode, norm)
    assert parts.item() == pytest.approx(whole.item())


def test_aggregate_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        grpo.aggregate(X, MASK, "mean", grpo.Normalizer(3, 2, 4, 5))


def test_overlong_penalty_by_hand():
    """L_max = 10, buffer 4, penalty 0.5: no change up to 6 tokens, then -0.5 * (L - 6) / 4 up to 10."""
    lengths = torch.tensor([3, 6, 7, 8, 10])
    got = grpo.overlong_penalty(lengths, max_new_tokens=10, buffer=4, penalty=0.5)
    assert got.tolist() == pytest.approx([0.0, 0.0, -0.125, -0.25, -0.5])


@pytest.mark.parametrize("buffer", [0, 10, 11])
def test_overlong_penalty_refuses_a_buffer_outside_the_budget(buffer):
    with pytest.raises(ValueError, match=r"overlong buffer must be in \(0, max_new_tokens = 10\)"):
        grpo.overlong_penalty(torch.tensor([5]), max_new_tokens=10, buffer=buffer, penalty=1.0)
