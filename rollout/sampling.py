"""The sampling distribution, in one place: temperature, then top-k, then top-p, renormalized.

    logp = processed_logprobs(logits, temperature=0.7, top_k=20, top_p=0.95)   # (..., V)
    token = sample(logp, generator)
    token, logprob = sample_token(logits, 0.7, 20, 0.95, generator)    # the engine's per-step call
    logprob, entropy = target_logprobs(logits, targets, 0.7, 20, 0.95)  # the learner's

The engine samples from this distribution and reports the sampled token's logprob under it; the
learner computes the policy's logprobs with the same function, so the policy being optimized is
exactly the one that was sampled from (vLLM's `processed_logprobs`). Filtered-out tokens get -inf.
Top-p keeps the smallest set of most-likely tokens whose mass reaches `top_p` (the token that
crosses the threshold is kept), as in HF `TopPLogitsWarper` and vLLM.

Sampling is inverse-CDF (one uniform per row against the cumulative probabilities, like
`torch.multinomial`, which is slower on CPU), rather than Gumbel-max: on CPU, `rand`, `log` and
`argmax` over (B, V) each cost more than a softmax. Without top-k/top-p (the usual RL setting)
`target_logprobs` is one fused cross-entropy, so the learner keeps no (..., V) log-softmax for autograd.

Used by the torch engine (`sample_token`), the learner (`target_logprobs`) and the next-token loss of
pretraining and SFT (`answerkey.model.nll_sum`), so all three compute the same distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def processed_logprobs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0) -> torch.Tensor:
    """Log-probabilities over the last dim after temperature / top-k / top-p; same shape as `logits`."""
    logits = _scaled(logits, temperature)
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
    """One token per row from (B, V) log-probabilities by inverse-CDF sampling (no CPU sync). (B,)

    One uniform per row against the cumulative mass; `right=True` and the cap at the last token with
    mass mean a token of zero probability (-inf) is never returned, even for u = 0 or a rounded-up u.
    """
    cdf = logprobs.exp().cumsum_(dim=-1)  # (B, V)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=logprobs.device, dtype=cdf.dtype).mul_(total)
    last = (cdf < total).sum(dim=-1)  # index of the last token with mass
    return torch.minimum(torch.searchsorted(cdf, u, right=True).squeeze(-1), last)


def sample_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                 generator: torch.Generator | None = None,
                 forced: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (or take `forced`) one token per row of (B, V) logits; (token (B,), its processed logprob
    (B,))."""
    logp = processed_logprobs(logits, temperature, top_k, top_p)
    token = sample(logp, generator) if forced is None else forced
    return token, gather(logp, token)


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Processed logprob of each target under (..., V) logits, and the entropy (no gradient); (...) each.

    Without top-k/top-p it is one fused cross-entropy (its backward is softmax - onehot, no (..., V)
    log-softmax is kept for autograd) plus a no-grad entropy; with them, `processed_logprobs`.
    """
    if top_k == 0 and top_p >= 1.0:
        z = _scaled(logits, temperature)
        V = z.shape[-1]
        logprobs = -F.cross_entropy(z.reshape(-1, V), targets.reshape(-1),
                                    reduction="none").view(targets.shape)
        with torch.no_grad():
            p = torch.softmax(z.detach(), dim=-1)
            ent = torch.logsumexp(z.detach(), dim=-1) - (p * z.detach()).sum(dim=-1)
        return logprobs, ent
    logp = processed_logprobs(logits, temperature, top_k, top_p)
    with torch.no_grad():
        ent = entropy(logp)
    return gather(logp, targets), ent


def gather(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logprobs[..., tokens]: (..., V), (...) -> (...)."""
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy of each distribution over the last dim, treating -inf entries as zero mass. (...)"""
    p = logprobs.exp()
    return -(p * logprobs.masked_fill(p == 0, 0.0)).sum(dim=-1)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits in fp32 (or fp64 in tests) divided by the temperature; a new tensor only when needed."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits if temperature == 1.0 else logits / temperature
