"""The learner's forward: logprobs of every completion token of a micro-batch, each distinct prompt run once.

    logprobs, entropy = completion_logprobs(model, prompts, valid, index, completions, 0.7, 20, 0.95)
    logits = completion_logits(model, prompts, valid, index, completions)   # (N, Tc, V): all at once

A GRPO batch is P prompts x G completions. A plain forward over P * G full sequences runs every prompt G
times, and right-padding to the longest prompt + completion adds more; here the Q distinct prompts of a
micro-batch run once (Q, Lp) and the N completions (N, Tc) attend to their prompt's keys and values, which
are indexed per row (autograd sums the G rows' gradients into the shared prompt). The token count of the
forward and backward drops from N * (Lp + Tc) to Q * Lp + N * Tc: for 8 x 8 completions of 64 tokens and
prompts of ~30 tokens, a third less. Both streams share every matmul (their tokens are concatenated); only
attention sees them apart: prompts causally over themselves, completions over [their prompt, themselves].

For plain Llama models (`llama.is_plain_llama`) this is a lean forward over the HF module's own
parameters: the same math as `transformers`' Llama, fp32 RMSNorm, on CPU attention by two batched matmuls
up to `EXPLICIT_ATTENTION_MAX` positions (faster there than SDPA's flash kernel, forward and backward) and
SDPA beyond, and optionally the elementwise SwiGLU and RMSNorm compiled by torch.compile (`fused`).
Anything else, or `lean=False`, runs the HF model (the reference) on the left-padded prompt +
right-padded completion with position ids counted from each row's first real token. Under
`torch.autocast` both run in the autocast dtype, like any HF forward. tests/test_lean_forward.py and
tests/test_prompt_sharing.py pin the lean forward to HF's (logprobs and gradients).

Logprobs without the (N, Tc, V) logits: `completion_logprobs` runs the model up to its final hidden state
(N, Tc, d) and applies the LM head and `rollout.sampling.target_logprobs` `LOGPROB_CHUNK` tokens at a time,
each chunk under non-reentrant activation checkpointing, so autograd keeps one chunk's input (chunk, d)
instead of its logits and the backward recomputes one chunk's logits at a time. At Qwen2.5's vocabulary
(152k) the fp32 logits of 16k tokens are 10 GB, kept for the backward with their log-softmax; a chunk's
are 0.6 GB, alive only while that chunk is computed. The cost is the head's GEMM once more in the
backward. Only for heads that are one matmul of the last hidden state (`plain_head`); other models
(logit soft-capping, logit scales) and FSDP-sharded ones (whose root parameters are gathered only inside
the root module's forward) compute all logits at once, as `completion_logits` does. (Liger-Kernel's fused
linear cross-entropy does the same in fused kernels.)

The learner (`learner/learner.py`) is its only caller: it passes a `learner.batch.MicroBatch`'s tensors.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from answerkey.model.llama import EXPLICIT_ATTENTION_MAX, is_plain_llama, rms_norm, rotary_tables, rotate
from answerkey.model.onednn import linear
from answerkey.rollout import sampling as S

# Completion tokens (rows of a micro-batch's N * Tc) whose logits exist at once in `completion_logprobs`:
# (1024, V) fp32 logits are 0.6 GB at V = 152k (Qwen2.5), 0.13 GB at 32k; large enough that the head's GEMM
# (1024 x d x V) keeps a GPU busy.
LOGPROB_CHUNK = 1024
# model types whose logits are `lm_head(last hidden state)`, nothing after it (Gemma 2's soft-capping,
# Cohere's and Granite's logit scales are not): checked in their transformers modeling files
PLAIN_HEAD_TYPES = ("llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")


def completion_logprobs(model: torch.nn.Module, prompts: torch.Tensor, valid: torch.Tensor,
                        index: torch.Tensor, completions: torch.Tensor, temperature: float = 1.0,
                        top_k: int = 0, top_p: float = 1.0, lean: bool = True, compile: bool = False,
                        chunk: int | None = LOGPROB_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Processed logprobs (N, Tc) of the completion tokens and their entropy (N, Tc, no gradient): what
    `rollout.sampling.target_logprobs` gives on `completion_logits`, with the logits made `chunk` tokens at
    a time (module docstring). `chunk=None`, a head that is not `plain_head`: all logits at once."""
    sampling = (temperature, top_k, top_p)
    if lean and is_plain_llama(model):
        hidden, head = _lean(model, prompts, valid, index, completions, compile), _lean_head(model)
    elif chunk is not None and plain_head(model):
        hidden, head = _hf_hidden(model, prompts, valid, index, completions), model.get_output_embeddings()
    else:
        return S.target_logprobs(_hf(model, prompts, valid, index, completions), completions, *sampling)
    if chunk is None:
        return S.target_logprobs(head(hidden), completions, *sampling)
    return chunked_target_logprobs(hidden, head, completions, *sampling, chunk=chunk)


def completion_logits(model: torch.nn.Module, prompts: torch.Tensor, valid: torch.Tensor, index: torch.Tensor,
                      completions: torch.Tensor, lean: bool = True, compile: bool = False) -> torch.Tensor:
    """Logits (N, Tc, V) predicting each completion token of each row; `compile`: see `swiglu`.

    prompts (Q, Lp) left-padded, valid (Q, Lp) bool (False on padding), index (N,) the prompt each row
    continues, completions (N, Tc) right-padded; all on the model's device.
    """
    if lean and is_plain_llama(model):
        return _lean_head(model)(_lean(model, prompts, valid, index, completions, compile))
    return _hf(model, prompts, valid, index, completions)


def chunked_target_logprobs(hidden: torch.Tensor, head, targets: torch.Tensor, temperature: float, top_k: int,
                            top_p: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`target_logprobs(head(hidden), targets, ...)`, `chunk` tokens at a time: hidden (N, Tc, d), targets
    (N, Tc); (N, Tc) each.

    With autograd on, each chunk runs under `torch.utils.checkpoint` (non-reentrant): its forward keeps only
    its (chunk, d) input, and the backward recomputes its logits when it reaches that chunk.
    """
    def one(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return S.target_logprobs(head(h), t, temperature, top_k, top_p)

    grad = torch.is_grad_enabled()
    rows = hidden.reshape(-1, hidden.shape[-1])  # (N * Tc, d)
    chunks = zip(rows.split(chunk), targets.reshape(-1).split(chunk), strict=True)
    parts = [checkpoint(one, h, t, use_reentrant=False, preserve_rng_state=False) if grad else one(h, t)
             for h, t in chunks]
    logprobs, entropy = (torch.cat(values).view(targets.shape) for values in zip(*parts, strict=True))
    return logprobs, entropy


def plain_head(model: torch.nn.Module) -> bool:
    """True when the model's logits are its output embedding applied to its decoder's last hidden state (a
    `PLAIN_HEAD_TYPES` model, not sharded by FSDP)."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) in PLAIN_HEAD_TYPES
            and all(type(p.data) is torch.Tensor for p in model.parameters()))  # not DTensor (FSDP)


def _hf_inputs(prompts, valid, index, completions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompt + right-padded completion per row (N, Lp + Tc): ids, attention mask, position
    ids counted from each row's first real token."""
    input_ids = torch.cat([prompts[index], completions], dim=1)
    mask = torch.cat([valid[index], torch.ones_like(completions, dtype=torch.bool)], dim=1).long()
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _hf(model, prompts, valid, index, completions) -> torch.Tensor:
    Tc = completions.shape[1]
    input_ids, mask, positions = _hf_inputs(prompts, valid, index, completions)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                   logits_to_keep=Tc + 1).logits
    return logits[:, :-1]  # position Lp - 1 + t predicts completion token t


def _hf_hidden(model, prompts, valid, index, completions) -> torch.Tensor:
    """The decoder's last hidden state (N, Tc, d) at the positions that predict the completion tokens:
    `_hf`'s logits are the output embedding of it."""
    Tc = completions.shape[1]
    input_ids, mask, positions = _hf_inputs(prompts, valid, index, completions)
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                 use_cache=False).last_hidden_state
    return hidden[:, -(Tc + 1):-1]


def _lean_head(model):
    """The lean forward's LM head: `linear` (oneDNN on CPU) with the model's output weight."""
    return functools.partial(linear, w=model.lm_head.weight)


def _lean(model, prompts, valid, index, completions, compile: bool) -> torch.Tensor:
    """The final hidden state, normed (N, Tc, d), at the positions that predict the completion tokens."""
    m, cfg = model.model, model.config
    (Q, Lp), (N, Tc) = prompts.shape, completions.shape
    H, K = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    eps, dev, split = cfg.rms_norm_eps, prompts.device, Q * Lp
    # positions from each row's first real token; completions continue their prompt
    p_pos = (valid.long().cumsum(-1) - 1).clamp(min=0)  # (Q, Lp)
    c_pos = valid.sum(-1)[index][:, None] + torch.arange(Tc, device=dev)  # (N, Tc)
    tokens = torch.cat([prompts.reshape(-1), completions.reshape(-1)])
    x = F.embedding(tokens, m.embed_tokens.weight)  # (Q*Lp + N*Tc, d)
    cos, sin = rotary_tables(model, Lp + Tc, dev, x.dtype)
    positions = torch.cat([p_pos.reshape(-1), c_pos.reshape(-1)])
    cos, sin = cos[positions][:, None], sin[positions][:, None]  # (tokens, 1, D)
    p_mask, c_mask = _masks(valid, index, Tc)
    group = group_size(index, Q)  # once per micro-batch: per_row runs 2 * layers + 1 times
    for layer in m.layers:
        a, mlp = layer.self_attn, layer.mlp
        # one GEMM for q|k|v and one for gate|up (the concatenations are differentiable, so the gradients
        # land in the module's own parameters), rotary on queries and keys of all tokens at once;
        # the attention scale folded into the query rows: a (H*D, d) multiply instead of one over every query
        w_qkv = torch.cat([a.q_proj.weight * a.scaling, a.k_proj.weight, a.v_proj.weight])
        qkv = linear(norm(x, layer.input_layernorm.weight, eps, compile), w_qkv).view(-1, H + 2 * K, D)
        # split, not slices: a slice's backward fills a zero tensor of the whole input per slice, split's
        # is one cat
        qk, v = qkv.split([H + K, K], 1)
        q, k = rotate(qk, cos, sin).split([H, K], 1)  # (tokens, heads, D)
        (qp, qc), (kp, kc), (vp, vc) = (t.split([split, N * Tc]) for t in (q, k, v))
        qp, kp, vp = (t.view(Q, Lp, -1, D).transpose(1, 2) for t in (qp, kp, vp))  # (Q, heads, Lp, D)
        qc, kc, vc = (t.view(N, Tc, -1, D).transpose(1, 2) for t in (qc, kc, vc))  # (N, heads, Tc, D)
        out_p = _attention(qp, kp, vp, p_mask)
        keys = torch.cat([per_row(kp, index, group), kc], dim=2)
        values = torch.cat([per_row(vp, index, group), vc], dim=2)
        out_c = _attention(qc, keys, values, c_mask)
        out = torch.cat([out_p.transpose(1, 2).reshape(split, H * D),
                         out_c.transpose(1, 2).reshape(N * Tc, H * D)])
        x = linear(out, a.o_proj.weight, residual=x)
        w_gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        gate_up = linear(norm(x, layer.post_attention_layernorm.weight, eps, compile), w_gate_up)
        x = linear(swiglu(gate_up, compile), mlp.down_proj.weight, residual=x)
    last_prompt = per_row(x[:split].view(Q, Lp, -1)[:, -1], index, group)  # (N, d): predicts token 0
    hidden = torch.cat([last_prompt[:, None], x[split:].view(N, Tc, -1)[:, :-1]], dim=1)  # (N, Tc, d)
    return norm(hidden, m.norm.weight, eps, compile)  # the LM head's input (`_lean_head`)


def group_size(index: torch.Tensor, Q: int) -> int | None:
    """G when the rows' prompt indices (N,) are Q equal consecutive groups (GRPO's G completions per prompt:
    0..0 1..1 ...), else None."""
    N = index.shape[0]
    if N % Q == 0 and torch.equal(index, torch.arange(Q, device=index.device).repeat_interleave(N // Q)):
        return N // Q
    return None


def per_row(t: torch.Tensor, index: torch.Tensor, group: int | None) -> torch.Tensor:
    """t[index] for prompt tensors t (Q, ...) and rows' prompt indices (N,). With `group` (`group_size`), by
    expanding instead: the same values, but the backward is one sum over each group instead of an
    accumulating scatter (`index_put`)."""
    if group is None:
        return t[index]
    return t[:, None].expand(t.shape[0], group, *t.shape[1:]).reshape(-1, *t.shape[1:])


def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def swiglu(gate_up: torch.Tensor, compile: bool = False) -> torch.Tensor:
    """SiLU(gate) * up of the fused gate|up output; with `compile`, one loop each way (see `fused`)."""
    return fused(_swiglu, gate_up, compile=compile)


def norm(x: torch.Tensor, weight: torch.Tensor, eps: float, compile: bool = False) -> torch.Tensor:
    """`rms_norm`; with `compile` (see `fused`), forward and backward one loop each instead of eager's six
    ops backward."""
    return fused(rms_norm, x, weight, eps, compile=compile)


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=True)


_compile_failed = False  # set once torch.compile raised: eager from then on


def fused(fn, *args, compile: bool):
    """fn(*args); with `compile`, on CPU, through torch.compile (inductor), which turns an elementwise chain's
    forward and backward into one loop each instead of a pass over the activation per op. Elsewhere, or when
    this torch cannot compile (no C++ compiler), the same ops eagerly."""
    global _compile_failed
    if not compile or args[0].device.type != "cpu" or _compile_failed:
        return fn(*args)
    try:
        return _compiled(fn)(*args)
    except Exception as e:  # noqa: BLE001 - inductor raises many kinds; eager is always correct
        warnings.warn(f"torch.compile of the learner's {fn.__name__} failed, running it eagerly: "
                      f"{type(e).__name__}: {e}", stacklevel=3)
        _compile_failed = True
        return fn(*args)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of q (B, H, T, D), already scaled, over k, v (B, K, S, D). A float `mask` is additive (from
    `_masks`): two batched matmuls with the queries grouped per KV head, which on CPU at short lengths beats
    SDPA's flash kernel forward and backward; a bool mask goes to SDPA. Under autocast on CPU both run in
    fp32 (the flash kernel's bf16 backward is slower than its fp32 one)."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return _attention(q.float(), k.float(), v.float(), mask)
    if mask.dtype == torch.bool:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0,
                                              enable_gqa=k.shape[1] != q.shape[1])
    (B, H, T, D), (K, S) = q.shape, k.shape[1:3]
    scores = torch.matmul(q.reshape(B, K, -1, D), k.transpose(-1, -2)).view(B, K, H // K, T, S)
    probs = torch.softmax(scores.add_(mask.to(scores.dtype)[:, :, None]), dim=-1)
    return torch.matmul(probs.view(B, K, -1, S), v).view(B, H, T, D)


def _masks(valid: torch.Tensor, index: torch.Tensor, Tc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys each query may attend to: prompts (Q, 1, Lp, Lp) causally over their real tokens,
    completions (N, 1, Tc, Lp + Tc) over their prompt's real tokens and causally over themselves.

    Bool (True = may attend), or additive (0 / -inf) where `_attention` takes its matmul path (CPU, at most
    `EXPLICIT_ATTENTION_MAX` positions). valid (Q, Lp), index (N,).
    """
    (Lp, dev), N = (valid.shape[1], valid.device), index.shape[0]
    eye = torch.eye(Lp, dtype=torch.bool, device=dev)
    # a left-pad query row attends to itself only (never an all-masked row, which would be NaN)
    p_mask = (torch.ones(Lp, Lp, dtype=torch.bool, device=dev).tril() & valid[:, None, None, :]) | eye
    causal = torch.ones(Tc, Tc, dtype=torch.bool, device=dev).tril().expand(N, 1, Tc, Tc)
    c_mask = torch.cat([valid[index][:, None, None, :].expand(N, 1, Tc, Lp), causal], dim=-1)
    if dev.type != "cpu" or Lp + Tc > EXPLICIT_ATTENTION_MAX:
        return p_mask, c_mask
    additive = lambda m: torch.zeros(m.shape, device=dev).masked_fill_(~m, float("-inf"))  # noqa: E731
    return additive(p_mask), additive(c_mask)
