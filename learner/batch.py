"""From scored rollouts to training tensors: advantages, group filtering, token-budget micro-batches.

    batch = make_batch(groups, cfg, max_new_tokens)     # groups: P lists of G Trajectory
    for mb in batch.micro_batches(token_budget=8192):    # each: padded tensors, distinct prompts once
        ...

Each sequence is prompt + completion, exactly the token ids that were sampled (and, for multi-turn envs,
the env's own tokens with loss mask 0). A micro-batch holds each distinct prompt once, left-padded
(Q, Lp), and every row's completion right-padded (N, Tc) with the index of its prompt: the G completions
of a group share one prompt, so the learner's forward runs it once, not G times
(`answerkey/model/completion.py`). Per-token tensors are completion-aligned: position t of a row is
completion token t, whose logprob is taken given the prompt and completion tokens 0..t-1;
`loss_mask[:, t]` says whether it is trained. Rows are ordered by group, longest group first, so that a
micro-batch keeps a group's rows together and (distinct prompts x Lp) + (rows x Tc) stays within the token
budget.
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
    """Padded tensors for one forward/backward: Q distinct prompts, N rows, Tc = longest completion."""

    prompt_ids: torch.Tensor  # (Q, Lp) left-padded
    prompt_valid: torch.Tensor  # (Q, Lp) bool, False on padding
    prompt_index: torch.Tensor  # (N,) long: row n continues prompt prompt_index[n]
    targets: torch.Tensor  # (N, Tc) completion token ids, right-padded
    loss_mask: torch.Tensor  # (N, Tc) float, 1 where the completion token is trained
    rollout_logprobs: torch.Tensor  # (N, Tc) engine logprob of each token (0 outside the mask)
    advantages: torch.Tensor  # (N, 1)
    index: list[int]  # positions of these rows in the batch
    lengths: list[int]  # completion length of each row
    old_logprobs: torch.Tensor | None  # (N, Tc) when every row has them
    ref_logprobs: torch.Tensor | None  # (N, Tc) when every row has them

    @property
    def num_tokens(self) -> int:
        """Token positions the forward runs: distinct prompts x Lp + rows x Tc."""
        return int(self.prompt_ids.numel() + self.targets.numel())


@dataclass
class TrainBatch:
    rows: list[Row]
    norm: grpo.Normalizer
    metrics: dict[str, float] = field(default_factory=dict)

    def micro_batches(self, token_budget: int) -> list[MicroBatch]:
        return [collate([self.rows[i] for i in idx], idx) for idx in pack(self.rows, token_budget)]


def make_batch(groups: Sequence[Sequence[Trajectory]], scale_by_std: bool, drop_uniform_groups: bool,
               mask_truncated: bool, max_new_tokens: int,
               overlong: tuple[int, float] | None = None) -> TrainBatch:
    """Advantages per group, uniform groups dropped (optionally), truncated completions masked
    (optionally); `overlong` = (buffer, penalty) shapes the rewards first (DAPO's soft overlong
    punishment)."""
    if not groups or any(len(g) != len(groups[0]) for g in groups):
        raise ValueError(f"groups must be P lists of G trajectories each, got sizes "
                         f"{[len(g) for g in groups]}")
    rewards = torch.tensor([[t.score.value for t in g] for g in groups], dtype=torch.float64)  # (P, G)
    shaping = {}
    if overlong is not None:
        lengths = torch.tensor([[len(t.completion_ids) for t in g] for g in groups])
        penalty = grpo.overlong_penalty(lengths, max_new_tokens, *overlong)
        rewards = rewards + penalty
        shaping = {"learner/overlong_penalty": float(penalty.mean()),
                   "learner/overlong_fraction": float((penalty < 0).double().mean())}
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
            rows.append(Row(traj.prompt_ids + traj.completion_ids, len(traj.prompt_ids), mask,
                            list(traj.logprobs), float(advantages[p, g])))
    trained = [r for r in rows if any(r.loss_mask)]
    norm = grpo.Normalizer(tokens=sum(sum(r.loss_mask) for r in rows), sequences=len(trained),
                           max_new_tokens=max_new_tokens, generated=len(groups) * len(groups[0]))
    metrics = {
        "learner/groups_kept": (float(len(groups) - int(uniform.sum())) if drop_uniform_groups
                                else float(len(groups))),
        "learner/groups_uniform": float(uniform.sum()),
        "learner/truncated_fraction": truncated / (len(groups) * len(groups[0])),
        "learner/loss_tokens": float(norm.tokens),
    } | shaping
    return TrainBatch(rows=rows, norm=norm, metrics=metrics)


def pack(rows: Sequence[Row], token_budget: int) -> list[list[int]]:
    """Group row indices so that (distinct prompts x longest prompt) + (rows x longest completion) stays
    within `token_budget`.

    Rows sharing a prompt are kept together (their prompt then runs once), groups longest first, rows of a
    group longest first, so each micro-batch holds sequences of similar length. A row over budget goes alone.
    """
    prompts: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(rows):
        prompts.setdefault(tuple(r.ids[: r.prompt_len]), []).append(i)
    size = [len(r.ids) - r.prompt_len for r in rows]  # completion lengths
    groups = sorted(prompts.items(), key=lambda kv: -max(size[i] for i in kv[1]))
    batches: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()  # prompts of the current micro-batch
    lp = tc = 0  # its longest prompt and completion
    for prompt, members in groups:
        for i in sorted(members, key=lambda i: -size[i]):
            fits = batches and (len(seen | {prompt}) * max(lp, len(prompt))
                                + (len(batches[-1]) + 1) * max(tc, size[i])) <= token_budget
            if not fits:
                batches.append([])
                seen, lp, tc = set(), 0, 0
            batches[-1].append(i)
            seen.add(prompt)
            lp, tc = max(lp, len(prompt)), max(tc, size[i])
    return batches


def collate(rows: Sequence[Row], index: list[int], pad_id: int = 0) -> MicroBatch:
    """Distinct prompts left-padded, completions right-padded, completion-aligned per-token tensors."""
    prompts: dict[tuple[int, ...], int] = {}
    prompt_index = [prompts.setdefault(tuple(r.ids[: r.prompt_len]), len(prompts)) for r in rows]
    Q, Lp = len(prompts), max(len(p) for p in prompts)
    N, Tc = len(rows), max(1, max(len(r.ids) - r.prompt_len for r in rows))
    prompt_ids = torch.full((Q, Lp), pad_id, dtype=torch.long)
    prompt_valid = torch.zeros((Q, Lp), dtype=torch.bool)
    for q, ids in enumerate(prompts):
        prompt_ids[q, Lp - len(ids):] = torch.tensor(ids)
        prompt_valid[q, Lp - len(ids):] = True
    targets = torch.full((N, Tc), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((N, Tc))
    rollout = torch.zeros((N, Tc), dtype=torch.float64)
    lengths = [len(r.ids) - r.prompt_len for r in rows]
    for n, (r, length) in enumerate(zip(rows, lengths, strict=True)):
        targets[n, :length] = torch.tensor(r.ids[r.prompt_len:], dtype=torch.long)
        loss_mask[n, :length] = torch.tensor(r.loss_mask, dtype=loss_mask.dtype)
        rollout[n, :length] = torch.tensor(r.rollout_logprobs, dtype=torch.float64)
    advantages = torch.tensor([[r.advantage] for r in rows], dtype=torch.float64)
    return MicroBatch(prompt_ids, prompt_valid, torch.tensor(prompt_index), targets, loss_mask, rollout,
                      advantages, list(index), lengths, _place(rows, "old_logprobs", Tc),
                      _place(rows, "ref_logprobs", Tc))


def _place(rows: Sequence[Row], attr: str, Tc: int) -> torch.Tensor | None:
    """Per-row completion tensors in an (N, Tc) tensor, on their device (the learner's, which made them)."""
    values = [getattr(r, attr) for r in rows]
    if any(v is None for v in values):
        return None
    out = torch.zeros((len(rows), Tc), dtype=values[0].dtype, device=values[0].device)
    for n, v in enumerate(values):
        out[n, : len(v)] = v
    return out


def completion_values(mb: MicroBatch, values: torch.Tensor) -> list[torch.Tensor]:
    """Each row's per-completion-token values out of an (N, Tc) tensor (inverse of `_place`)."""
    return [values[n, :length] for n, length in enumerate(mb.lengths)]
