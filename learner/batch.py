"""From scored rollouts to training tensors: advantages, group filtering, token-budget micro-batches.

    batch = make_batch(groups, cfg, max_new_tokens)     # groups: P lists of G Trajectory
    for mb in batch.micro_batches(token_budget=8192):    # each: padded (N, L) tensors
        ...

Each sequence is prompt + completion, exactly the token ids that were sampled (and, for multi-turn
envs, the env's own tokens with loss mask 0). Tensors are target-aligned: position t of a row
holds the logprob of token t+1 given tokens 0..t, so `loss_mask[:, t]` says whether token t+1 is
trained. Rows are right-padded; micro-batches group rows of similar length so that
rows x padded length stays within the token budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from answerkey.envs.base import Trajectory
from answerkey.learner import grpo


@dataclass
class Row:
    """One training sequence."""

    ids: list[int]  # prompt + completion
    prompt_len: int
    loss_mask: list[int]  # per completion token
    rollout_logprobs: list[float]  # per completion token, from the engine
    advantage: float
    old_logprobs: torch.Tensor | None = None  # per completion token, the learner's before the update
    ref_logprobs: torch.Tensor | None = None  # per completion token, the frozen reference's


@dataclass
class MicroBatch:
    """Padded, target-aligned tensors for one forward/backward. N rows, T = padded length - 1."""

    input_ids: torch.Tensor  # (N, T+1)
    attention_mask: torch.Tensor  # (N, T+1)
    targets: torch.Tensor  # (N, T) input_ids shifted left
    loss_mask: torch.Tensor  # (N, T) float, 1 where the target is a trained completion token
    rollout_logprobs: torch.Tensor  # (N, T) engine logprob of each target (0 outside the mask)
    advantages: torch.Tensor  # (N, 1)
    index: list[int]  # positions of these rows in the batch
    spans: list[tuple[int, int]]  # target positions [start, end) of each row's completion
    old_logprobs: torch.Tensor | None  # (N, T) when every row has them
    ref_logprobs: torch.Tensor | None  # (N, T) when every row has them

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclass
class TrainBatch:
    rows: list[Row]
    norm: grpo.Normalizer
    metrics: dict[str, float] = field(default_factory=dict)

    def micro_batches(self, token_budget: int) -> list[MicroBatch]:
        return [collate([self.rows[i] for i in idx], idx) for idx in pack(self.lengths(), token_budget)]

    def lengths(self) -> list[int]:
        return [len(r.ids) for r in self.rows]


def make_batch(groups: Sequence[Sequence[Trajectory]], scale_by_std: bool, drop_uniform_groups: bool,
               mask_truncated: bool, max_new_tokens: int) -> TrainBatch:
    """Advantages per group, uniform groups dropped (optionally), truncated completions masked (optionally)."""
    if not groups or any(len(g) != len(groups[0]) for g in groups):
        raise ValueError(f"groups must be P lists of G trajectories each, got sizes {[len(g) for g in groups]}")
    rewards = torch.tensor([[t.score.value for t in g] for g in groups], dtype=torch.float64)  # (P, G)
    advantages = grpo.group_advantages(rewards, scale_by_std)  # (P, G)
    uniform = grpo.uniform_groups(rewards)  # (P,)
    rows, truncated = [], 0
    for p, group in enumerate(groups):
        if drop_uniform_groups and uniform[p]:
            continue
        for g, traj in enumerate(group):
            mask = list(traj.loss_mask)
            if traj.truncated:
                truncated += 1
                if mask_truncated:
                    mask = [0] * len(mask)
            rows.append(Row(traj.prompt_ids + traj.completion_ids, len(traj.prompt_ids), mask, list(traj.logprobs),
                            float(advantages[p, g])))
    trained = [r for r in rows if any(r.loss_mask)]
    norm = grpo.Normalizer(tokens=sum(sum(r.loss_mask) for r in rows), sequences=len(trained), max_new_tokens=max_new_tokens)
    metrics = {
        "learner/groups_kept": float(len(groups) - int(uniform.sum())) if drop_uniform_groups else float(len(groups)),
        "learner/groups_uniform": float(uniform.sum()),
        "learner/truncated_fraction": truncated / (len(groups) * len(groups[0])),
        "learner/loss_tokens": float(norm.tokens),
    }
    return TrainBatch(rows=rows, norm=norm, metrics=metrics)


def pack(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Group row indices so that rows x longest row <= token_budget (a longer row goes alone).

    Rows are taken longest first, so each micro-batch holds rows of similar length (little padding).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= token_budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def collate(rows: Sequence[Row], index: list[int], pad_id: int = 0) -> MicroBatch:
    """Right-pad rows into target-aligned tensors."""
    N, L = len(rows), max(len(r.ids) for r in rows)
    input_ids = torch.full((N, L), pad_id, dtype=torch.long)
    attention = torch.zeros((N, L), dtype=torch.long)
    loss_mask = torch.zeros((N, L - 1))
    rollout = torch.zeros((N, L - 1), dtype=torch.float64)
    for n, r in enumerate(rows):
        input_ids[n, : len(r.ids)] = torch.tensor(r.ids)
        attention[n, : len(r.ids)] = 1
        start, end = r.prompt_len - 1, len(r.ids) - 1  # target positions of the completion tokens
        loss_mask[n, start:end] = torch.tensor(r.loss_mask, dtype=loss_mask.dtype)
        rollout[n, start:end] = torch.tensor(r.rollout_logprobs, dtype=torch.float64)
    advantages = torch.tensor([[r.advantage] for r in rows], dtype=torch.float64)
    spans = [(r.prompt_len - 1, len(r.ids) - 1) for r in rows]
    return MicroBatch(input_ids, attention, input_ids[:, 1:], loss_mask, rollout, advantages, list(index), spans,
                      _place(rows, "old_logprobs", L), _place(rows, "ref_logprobs", L))


def _place(rows: Sequence[Row], attr: str, L: int) -> torch.Tensor | None:
    """Per-row completion tensors placed at their target positions in an (N, L-1) tensor."""
    values = [getattr(r, attr) for r in rows]
    if any(v is None for v in values):
        return None
    out = torch.zeros((len(rows), L - 1), dtype=values[0].dtype)
    for n, (r, v) in enumerate(zip(rows, values, strict=True)):
        out[n, r.prompt_len - 1 : len(r.ids) - 1] = v
    return out


def completion_values(mb: MicroBatch, values: torch.Tensor) -> list[torch.Tensor]:
    """Each row's per-completion-token values out of a target-aligned (N, T) tensor (inverse of `_place`)."""
    return [values[n, start:end] for n, (start, end) in enumerate(mb.spans)]
