"""What the two lean Llama forwards share: the engine's cached decode (`decode.py`) and the learner's
completion forward (`completion.py`). Which models they cover, RMSNorm, rotary tables and rotation.

    if is_plain_llama(model):                                   # else: Hugging Face's forward
        cos, sin = rotary_tables(model, max_len, device, dtype)    # (max_len, D) each
        q = rotate(q, cos[positions], sin[positions])
        h = rms_norm(x, layer.input_layernorm.weight, eps)

Both forwards read the Hugging Face module's own parameters and compute what its forward computes (the
reference; the tests named in `answerkey/model/__init__.py` pin them to it). They cover plain Llama only:
rope scaling other than the default, attention or MLP bias, other activations, tensor-parallel
pretraining splits, sharded (DTensor) parameters and other architectures run HF's forward instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = ("llama",)
EXPLICIT_ATTENTION_MAX = 256  # prompts up to this long attend by two matmuls, longer ones by SDPA


def is_plain_llama(model) -> bool:
    """True when every feature of the model is one the lean forwards (`decode.py`, `completion.py`)
    implement."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_TYPES:
        return False
    rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    plain_tensors = all(type(p.data) is torch.Tensor for p in model.parameters())  # not DTensor (FSDP)
    return (rope.get("rope_type", "default") == "default" and cfg.hidden_act == "silu" and plain_tensors
            and not getattr(cfg, "attention_bias", False) and not getattr(cfg, "mlp_bias", False)
            and getattr(cfg, "pretraining_tp", 1) == 1)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm: fused in fp32 (and in fp64, where HF would round to fp32: tests use fp64 to check
    that micro-batching and prompt sharing leave gradients unchanged, which fp32 rounding inside would
    blur); below fp32, HF's own way (normalize in fp32, cast back, then scale)."""
    if x.dtype in (torch.float32, torch.float64) and weight.dtype == x.dtype:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotary_tables(model, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin (length, D) for positions 0..length-1, bitwise HF's values for those positions.

    Rotary is then x * cos + roll(x, D/2) * sin_signed: `roll` swaps the halves, `sin_signed` negates the
    first half of sin, which together are HF's `rotate_half(x) * sin`.
    """
    rotary = model.model.rotary_emb
    positions = torch.arange(length, device=device, dtype=torch.float32)
    freqs = positions[:, None] * rotary.inv_freq.to(device=device, dtype=torch.float32)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * rotary.attention_scaling, emb.sin() * rotary.attention_scaling
    half = sin.shape[-1] // 2
    return cos.to(dtype), torch.cat((-sin[:, :half], sin[:, half:]), dim=-1).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding over the last dim (cos/sin broadcast against x)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin_signed)

