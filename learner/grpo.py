"""GRPO math as pure tensor functions: group advantages, the clipped surrogate, KL, TIS, aggregation.

No model, no optimizer, no Ray: each function is checked against hand-computed numbers in
`tests/test_grpo_math.py`. Shapes: P problems, G completions each, N sequences in a micro-batch,
T target positions.

- Advantages (Shao et al. 2024, GRPO, arXiv:2402.03300): A = r - mean(group), divided by the
  group's standard deviation (unbiased, as TRL and verl compute it) unless `scale_by_std=False`,
  which is Dr.GRPO's fix for the difficulty bias (Liu et al. 2025, arXiv:2503.20783).
- Surrogate: PPO's clipped objective with separate low/high clip ("clip-higher", DAPO, Yu et al.
  2025, arXiv:2503.14476): loss = -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A), ρ = π/π_old per token.
- KL of π to π_ref, per token, added in the loss, by one of Schulman's (2020) estimators with
  d = log π_ref - log π: k1 = -d (unbiased, can be negative), k2 = d²/2, k3 = exp(d) - d - 1 (unbiased, >= 0).
- TIS: tokens are weighted by min(π_old/π_rollout, cap) to correct for the engine's numerics
  differing from the learner's (Yao et al. 2025, "Your efficient RL framework secretly brings you
  off-policy RL training"). The weight carries no gradient.
- Overlong shaping (DAPO's soft overlong punishment): a completion of L tokens, with a budget of L_max and
  a buffer of B, gets -penalty * clamp((L - (L_max - B)) / B, 0, 1) added to its reward.
- Aggregation: how per-token losses become one scalar. Normalizers are computed on the whole
  batch before it is split into micro-batches, so the sum of micro-batch gradients equals the
  full-batch gradient exactly, in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossAgg = Literal["token-mean", "sequence-mean", "dr-grpo"]


def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages, centred within each group (and scaled by its std)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (P, G) with G >= 2, got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (rewards.std(dim=1, keepdim=True) + eps)
    return centred


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """Reward change per completion of `lengths` tokens: 0 up to max_new_tokens - buffer, then linearly down
    to -penalty at max_new_tokens (DAPO, Yu et al. 2025, eq. 13). Same shape as `lengths`."""
    if not 0 < buffer < max_new_tokens:
        raise ValueError(f"the overlong buffer must be in (0, max_new_tokens = {max_new_tokens}), "
                         f"got {buffer}")
    over = (lengths.to(torch.float64) - (max_new_tokens - buffer)) / buffer
    return -penalty * over.clamp(0.0, 1.0)


def uniform_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) -> (P,) True where every completion of a group got the same reward (zero advantage)."""
    return (rewards == rewards[:, :1]).all(dim=1)


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss and a mask of tokens where the clip was active. All (N, T); advantages (N, 1) ok."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


KlEstimator = Literal["k1", "k2", "k3"]


def kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KlEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' logprobs (see the module docstring).
    (N, T)"""
    delta = ref_logprobs - logprobs
    if estimator == "k1":
        return -delta
    if estimator == "k2":
        return 0.5 * delta**2
    if estimator == "k3":
        return torch.exp(delta) - delta - 1
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, k2 or k3")


def tis_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights min(pi_old / pi_rollout, cap) (no gradient), and the raw ratios. (N, T)"""
    ratio = torch.exp(old_logprobs - rollout_logprobs).detach()
    return ratio.clamp(max=cap), ratio


@dataclass(frozen=True)
class Normalizer:
    """Whole-batch counts that every micro-batch divides by, so micro-batch gradients add up exactly."""

    tokens: int  # loss tokens in the batch
    sequences: int  # sequences with at least one loss token
    max_new_tokens: int  # the generation budget, Dr.GRPO's constant per-sequence length
    generated: int  # every sequence the step generated (P x G), dropped or masked ones included


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: LossAgg, norm: Normalizer) -> torch.Tensor:
    """One scalar from (N, T) per-token values over `mask`: this micro-batch's share of the batch loss.

    token-mean:    sum(x * m) / tokens in the batch
    sequence-mean: sum over sequences of [sum_t(x * m) / len(seq)] / sequences in the batch
    dr-grpo:       sum(x * m) / (sequences generated * max_new_tokens): the same constant every step, whatever
                   uniform-group dropping or truncation masking removed (Dr.GRPO)
    """
    masked = per_token * mask
    if mode == "token-mean":
        return masked.sum() / max(norm.tokens, 1)
    if mode == "sequence-mean":
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_seq.sum() / max(norm.sequences, 1)
    if mode == "dr-grpo":
        return masked.sum() / max(norm.generated * norm.max_new_tokens, 1)
    raise ValueError(f"unknown loss aggregation {mode!r}; expected token-mean, sequence-mean or dr-grpo")
