"""Skips every module in tests/vllm, with the reason, where vLLM is not installed (e.g. the core .venv).

The modules are not imported then (they may `import vllm` at the top). Only ImportError is a skip: a vLLM that
is installed but broken (say, a CUDA torchvision against the CPU torch) fails the run.
"""

from __future__ import annotations

import pytest

try:
    import vllm  # noqa: F401

    MISSING = None
except ImportError as exc:
    MISSING = (f"vLLM is not installed here ({exc}): tests/vllm runs in .venv-vllm, "
               "`make test-vllm` (see tests/vllm/__init__.py)")


class _Skipped(pytest.Module):
    def collect(self):
        pytest.skip(MISSING)


def pytest_pycollect_makemodule(module_path, parent):
    if MISSING is not None:
        return _Skipped.from_parent(parent, path=module_path)
    return None
