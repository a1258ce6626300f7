"""HOW the policy is updated: GRPO math (`grpo`), batching by token budget (`batch`), and the
`Learner` (optimizer, schedule, reference model, SFT step), its FSDP2 ranks (`fsdp`, `shard`, `dcp`) and
the group of them the driver starts (`group`). Plain classes; Ray only in `group`.

Other areas use `Learner` (pretraining borrows its optimizer, schedule and checkpoints) and `checkpoint`."""

from answerkey.learner.learner import Learner

__all__ = ["Learner"]
