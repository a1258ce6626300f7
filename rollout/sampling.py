"""The sampling distribution, in one place: temperature, then top-k, then top-p, renormalized.

    logp = processed_logprobs(logits, temperature=0.7, top_k=20, top_p=0.95)   # (..., V)
    token = sample(logp, generator)

The engine samples from this distribution and reports the sampled token's logprob under it; the
learner computes the policy's logprobs with the same function, so the policy being optimized is
exactly the one that was sampled from (vLLM's `processed_logprobs`). Filtered-out tokens get -inf.
Top-p keeps the smallest set of most-likely tokens whose mass reaches `top_p` (the token that
crosses the threshold is kept), as in HF `TopPLogitsWarper` and vLLM.
"""

from __future__ import annotations

import torch


def processed_logprobs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Log-probabilities over the last dim after temperature / top-k / top-p; same shape as `logits`."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # fp32, or fp64 in tests
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the mass before it already reaches top_p (the first token is always kept)
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.log_softmax(dim=-1)


def sample(logprobs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from (B, V) log-probabilities, by the Gumbel-max trick (no CPU sync). (B,)"""
    uniform = torch.rand(logprobs.shape, generator=generator, device=logprobs.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20)))
    return (logprobs + gumbel).argmax(dim=-1)


def gather(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logprobs[..., tokens]: (..., V), (...) -> (...)."""
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy of each distribution over the last dim, treating -inf entries as zero mass. (...)"""
    p = logprobs.exp()
    return -(p * logprobs.masked_fill(p == 0, 0.0)).sum(dim=-1)
