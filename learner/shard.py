"""One GRPO batch across N learner ranks (FSDP data parallelism): which rows each rank trains on, and
the metrics summed back. No model, no optimizer; torch.distributed only in `Ranks.reduce`.

    ranks = Ranks(rank=1, world=2)
    batch = ranks.split(make_batch(groups, ...))      # every rank builds the whole batch from the same groups
    for mb in batch.micro_batches(token_budget):      # this rank's rows; as many micro-batches on every rank
        ...
    metrics = ranks.reduce(local_metrics)             # sums (and max / min) over the ranks

Every rank receives all P x G trajectories and computes advantages and the loss normalizers
(`grpo.Normalizer`: tokens, sequences) on the whole batch, so no count needs communicating and
each rank's share of the loss is already divided by the global count. The rows are dealt to the
ranks longest first, each to the rank with the fewest tokens so far (ties: the lowest rank). The
gradients are then summed over the ranks (FSDP's reduce-scatter with divide factor 1, see
learner/fsdp.py): N ranks give the gradient of one process on the whole batch, in every loss
aggregation mode, up to summation order.

FSDP gathers parameters inside every forward, so every rank must run the same number of forwards:
a rank with fewer micro-batches runs padding micro-batches of one 2-token row whose loss mask is
zero (it contributes exactly 0 to the loss, the gradient and every metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from answerkey.learner import grpo
from answerkey.learner.batch import MicroBatch, Row, TrainBatch, collate, pack


def deal(lengths: Sequence[int], world: int) -> list[list[int]]:
    """Row indices per rank: longest row first, each to the rank with the fewest tokens so far.

    deal([5, 3, 3, 1], 2) == [[0, 3], [1, 2]]   (6 and 6 tokens)
    """
    shares: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(world), key=lambda r: (load[r], r))
        shares[r].append(i)
        load[r] += lengths[i]
    return [sorted(s) for s in shares]


@dataclass
class RankBatch:
    """The whole batch's rows (plus one padding row, last) and normalizers; `micro_batches` yields this
    rank's.

    Duck-compatible with `TrainBatch` where the Learner uses it: `rows`, `norm`, `metrics`, `micro_batches`.
    """

    rows: list[Row]
    norm: grpo.Normalizer
    shares: list[list[int]]  # row indices of each rank
    rank: int
    metrics: dict[str, float] = field(default_factory=dict)

    def micro_batches(self, token_budget: int) -> list[MicroBatch]:
        plans = self.plans(token_budget)
        return [collate([self.rows[i] for i in idx], idx) for idx in plans[self.rank]]

    def plans(self, token_budget: int) -> list[list[list[int]]]:
        """Row indices of every micro-batch of every rank, padded to the same count with the padding row."""
        packs = [[[share[j] for j in idx] for idx in pack([self.rows[i] for i in share], token_budget)]
                 for share in self.shares]
        count = max(len(p) for p in packs)
        pad = len(self.rows) - 1
        return [p + [[pad]] * (count - len(p)) for p in packs]


PADDING = Row(ids=[0, 0], prompt_len=1, loss_mask=[0], rollout_logprobs=[0.0], advantage=0.0)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the learner group: rank r of `world`, on torch.distributed's default group."""

    rank: int
    world: int

    def split(self, batch: TrainBatch) -> RankBatch:
        shares = deal([len(r.ids) for r in batch.rows], self.world)
        pad = Row(list(PADDING.ids), PADDING.prompt_len, list(PADDING.loss_mask),
                  list(PADDING.rollout_logprobs), 0.0)
        return RankBatch([*batch.rows, pad], batch.norm, shares, self.rank, dict(batch.metrics))

    def reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Per-rank metrics -> the whole batch's: `*_max` / `*_min` by max / min, everything else summed.

        Summing is right because each rank's metric is already its sum divided by the whole batch's count.
        A key missing on a rank (a running max over no token) is taken from the ranks that have it.
        """
        import torch.distributed as dist

        gathered: list[dict[str, float] | None] = [None] * self.world
        dist.all_gather_object(gathered, metrics)
        out: dict[str, float] = {}
        for key in sorted({k for m in gathered for k in m}):
            values = [m[key] for m in gathered if key in m]
            reduce = max if key.endswith("_max") else min if key.endswith("_min") else sum
            out[key] = reduce(values)
        return out
