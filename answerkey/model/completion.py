"""The learner's forward: logits of every completion token of a micro-batch, each distinct prompt run once.

    logits = completion_logits(model, prompts, valid, index, completions)   # (N, Tc, V)

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

The learner (`learner/learner.py`) is its only caller: it passes a `learner.batch.MicroBatch`'s tensors.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from answerkey.model.llama import EXPLICIT_ATTENTION_MAX, is_plain_llama, rms_norm, rotary_tables, rotate
from answerkey.model.onednn import linear


def completion_logits(model: torch.nn.Module, prompts: torch.Tensor, valid: torch.Tensor, index: torch.Tensor,
                      completions: torch.Tensor, lean: bool = True, compile: bool = False) -> torch.Tensor:
    """Logits (N, Tc, V) predicting each completion token of each row; `compile`: see `swiglu`.

    prompts (Q, Lp) left-padded, valid (Q, Lp) bool (False on padding), index (N,) the prompt each row
    continues, completions (N, Tc) right-padded; all on the model's device.
    """
    if lean and is_plain_llama(model):
        return _lean(model, prompts, valid, index, completions, compile)
    return _hf(model, prompts, valid, index, completions)


def _hf(model, prompts, valid, index, completions) -> torch.Tensor:
    N, Tc = completions.shape
    input_ids = torch.cat([prompts[index], completions], dim=1)  # (N, Lp + Tc)
    mask = torch.cat([valid[index], torch.ones_like(completions, dtype=torch.bool)], dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                   logits_to_keep=Tc + 1).logits
    return logits[:, :-1]  # position Lp - 1 + t predicts completion token t


def _lean(model, prompts, valid, index, completions, compile: bool) -> torch.Tensor:
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
    return linear(norm(hidden, m.norm.weight, eps, compile), model.lm_head.weight)


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
