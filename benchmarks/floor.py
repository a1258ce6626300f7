"""The compute floor the CPU benchmarks report against: the machine's measured matmul peak, and FLOPs per
token.

    peak, shape = matmul_peak(model, torch.float32)   # FLOP/s, and the GEMM (M, K, N) that reached it
    floor_s = (2 * n * generated + 6 * n * trained) / peak

The peak is the best throughput of this process's threads over square GEMMs (2048^3, 4096^3) and every
distinct linear-layer shape of `model` at M = 64 (a decode step at batch 64) and M = 4096 (a training
micro-batch), each through both GEMM libraries torch has on CPU — `torch.matmul` (MKL for fp32) and
oneDNN (`answerkey.model.onednn.linear`, what our engine and learner use) — best of a few repeats. Where
MKL takes its AVX2 path (AMD CPUs) its fp32 GEMM runs well below oneDNN's, so a peak from MKL alone
would make every floor look easy; the best of both is the strict choice, and `result["peak_by_library"]`
lists each. FLOPs per token: 2N for a forward (generation, a logprob pass), 6N for forward + backward,
N = parameters with a tied embedding counted once (it is the LM head's matmul); attention's own FLOPs
are not counted, so the floor is a lower bound.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from answerkey.model.onednn import ONEDNN


def linear_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Distinct (in_features, out_features) of the model's linear layers."""
    return sorted({(m.in_features,
                    m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)})


def matmul_peak(model: torch.nn.Module | None = None, dtype: torch.dtype = torch.float32,
                repeats: int = 5) -> tuple[float, tuple[int, int, int], dict[str, float]]:
    """Best GEMM FLOP/s of this process's threads in `dtype`, the (M, K, N) that reached it, and the best
    per library."""
    shapes = [(2048, 2048, 2048), (4096, 4096, 4096)]
    if model is not None:
        shapes += [(m, k, n) for m in (64, 4096) for k, n in linear_shapes(model)]
    libraries = {"torch.matmul": lambda x, w: F.linear(x, w)}
    if ONEDNN:
        libraries["oneDNN"] = lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    best, best_shape, by_library = 0.0, shapes[0], {}
    for name, gemm in libraries.items():
        for m, k, n in shapes:
            x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
            gemm(x, w)
            # ~1 GFLOP per timing, so small shapes are not timer noise
            calls = max(1, int(2e9 // (2 * m * k * n)))
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(calls):
                    gemm(x, w)
                rate = 2 * m * k * n * calls / (time.perf_counter() - start)
                by_library[name] = max(by_library.get(name, 0.0), rate)
                if rate > best:
                    best, best_shape = rate, (m, k, n)
    return best, best_shape, by_library
