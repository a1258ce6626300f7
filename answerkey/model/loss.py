"""The next-token loss over whole rows, and the forward that gives its logits: pretraining and SFT.

    logits = forward_logits(model, input_ids, attention_mask, precision="bf16")   # (N, L, V)
    loss = nll_sum(logits, input_ids[:, 1:], loss_mask) / trained_tokens

The distribution is `rollout.sampling`'s at temperature 1 (the one the engine samples from), so a
pretrained model's loss and its sampled logprobs agree. The RL learner does not use these: it runs the
shared-prompt forward of `completion.py` (`Learner.sft_step` computes the same loss through it).
"""

from __future__ import annotations

import torch

from answerkey.rollout import sampling as S


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, precision: str = "fp32",
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (N, L, V) of a forward pass, under bf16 autocast when `precision == "bf16"`.

    `attention_mask` is (N, L) padding (1 = token), (N, 1, L, L) bool (True = may attend; passed to
    SDPA as is, e.g. block-diagonal for packed rows) or None (plain causal).
    """
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).logits


def nll_sum(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss: -sum over mask of log p(targets[t] | ..t) at temperature 1 (fp32).

    logits (N, L, V) of the inputs, targets and mask (N, L-1): position t predicts token t+1.
    """
    logp = S.processed_logprobs(logits[:, :-1])  # (N, L-1, V), the model's own distribution
    return -(S.gather(logp, targets) * mask.to(logp.dtype)).sum()
