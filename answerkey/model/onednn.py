"""The optional CPU fast path of the lean forwards: oneDNN's GEMMs, prepacked weights, and glibc keeping
freed memory for reuse.

    y = linear(x, w, residual=r)            # x @ w.T + r: oneDNN on CPU for fp32/bf16, else F.linear
    w = prepacked(weight, dtype, rows=64)   # the engine's per-call snapshot, in oneDNN's blocked layout
    keep_freed_memory()                     # once per process, on CPU

Nothing here is needed for correctness. Without oneDNN (`ONEDNN` is False), off CPU, under autocast, or in
a dtype oneDNN does not take, `linear` is `F.linear` and `prepacked` only casts; `keep_freed_memory` only
changes where freed memory goes. Hugging Face's forward is the reference implementation: the results are
IEEE fp32/bf16 either way (only the summation order differs), and tests/test_lean_forward.py pins `linear`
to `F.linear` (forward and backward) and the lean forwards to HF's.

Why: on x86 CPUs without Intel's MKL fast path (AMD), torch's default fp32 GEMM takes an AVX2 path that
runs well below oneDNN's AVX-512 kernel at the presets' layer shapes, forward and backward; small-batch
decode GEMMs are faster still with the weights reordered once per call into oneDNN's blocked layout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch
import torch.nn.functional as F


def _onednn_available() -> bool:
    try:
        x = torch.ones(2, 3)
        return bool(torch.ops.mkldnn._linear_pointwise(x, x, None, "none", [], "").sum() == 12)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


ONEDNN = _onednn_available()


@functools.cache  # once per process: find_library runs ldconfig, and the setting is process-wide anyway
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS; True if it took effect.

    A CPU forward allocates and frees activations of MBs every layer. By default glibc serves blocks over
    its mmap threshold (128 KB, self-raising up to 32 MB) from fresh `mmap`s and trims its heap, so the
    next block of that size page-faults every 4 KB page back in, which can cost a GEMM several times its
    own time. With `mmap` off for blocks (M_MMAP_MAX = 0) and no trimming, blocks of every size are
    recycled from the heap. The cost is a process that keeps its peak heap. Process-wide, idempotent; the
    engine and the learner call it on CPU.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


class _OneDNNLinear(torch.autograd.Function):
    """x @ w.T through oneDNN, with the two backward GEMMs through oneDNN as well (strided operands, no
    copies)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.mkldnn._linear_pointwise(dy, w.t(), None, "none", [], "")  # dy @ w
        if ctx.needs_input_grad[1]:
            d2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
            # oneDNN copies a transposed input to contiguous first: transpose the smaller of dy and x
            if d2.shape[1] <= x2.shape[1]:
                dw = torch.ops.mkldnn._linear_pointwise(d2.t(), x2.t(), None, "none", [], "")  # dy^T @ x
            else:  # (x^T @ dy)^T
                dw = torch.ops.mkldnn._linear_pointwise(x2.t(), d2.t(), None, "none", [], "").t().contiguous()
        return dx, dw


def linear(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w.T (+ residual): oneDNN's GEMM for fp32/bf16 on CPU, else `F.linear`. Same shapes and dtypes.

    `w` may be `prepacked`. Under autocast (the learner's bf16) and off CPU it is plain `F.linear`, which
    autocast and cuBLAS handle.
    """
    cpu = (ONEDNN and x.device.type == "cpu" and x.dtype == w.dtype
           and x.dtype in (torch.float32, torch.bfloat16))
    if not cpu or torch.is_autocast_enabled("cpu"):
        y = F.linear(x, w)
        return y if residual is None else residual + y
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        y = _OneDNNLinear.apply(x, w)
        return y if residual is None else residual + y
    if residual is not None and residual.dtype == x.dtype and residual.dim() == 2:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, None, "add")
    y = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return y if residual is None else residual + y


def prepacked(w: torch.Tensor, dtype: torch.dtype, rows: int) -> torch.Tensor:
    """`w` in `dtype`; on CPU in fp32/bf16 also reordered into oneDNN's blocked layout for inputs of `rows`
    rows, for `linear` without autograd (the engine's weights, which cannot change during a call)."""
    w = w.to(dtype)
    if ONEDNN and w.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16):
        return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows)
    return w
