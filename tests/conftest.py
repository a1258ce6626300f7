"""Shared fixtures: a BPE tokenizer trained on the synthetic world and tiny Llama models, built locally
in well under a second (no hub downloads)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from answerkey import chat
from answerkey.envs.synthetic import SyntheticEnv
from answerkey.model import build_model
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.pretrain.tokenizer import train_bpe

# The suite's models are tiny (0.1-1.4M parameters): overhead-bound, as fast on 1 thread as on 2, and 1 thread
# does not collapse when the machine is busy (2 threads spin against other work; RESULTS `tests-one-thread`).
torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Tests that use the session's Ray head are marked `ray`, tests that need the trained `policy_dir` are
    marked `slow` (`make check` leaves both out)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "ray_session" in fixtures:
            item.add_marker(pytest.mark.ray)
        if "policy_dir" in fixtures:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def synthetic_env() -> SyntheticEnv:
    return SyntheticEnv(difficulty=2, train_size=5000, test_size=200)


@pytest.fixture(scope="session")
def tokenizer(synthetic_env):
    return train_bpe([chat.render(c) for c in solution_conversations(synthetic_env)], vocab_size=384)


@pytest.fixture
def make_model(tokenizer):
    def make(seed: int = 0, dtype: torch.dtype = torch.float32, preset: str = "tiny"):
        stop_ids = chat.stop_token_ids(tokenizer)
        model = build_model(preset, len(tokenizer), stop_ids, pad_id=tokenizer.pad_token_id, seed=seed)
        return model.to(dtype)

    return make


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory, synthetic_env) -> Path:
    """A tiny policy warmed up on the synthetic world's worked solutions (it earns some reward), saved in HF
    format."""
    from answerkey.pretrain.bootstrap import tiny_policy

    model, tok = tiny_policy(synthetic_env, sft_steps=150, seed=0)
    path = tmp_path_factory.mktemp("policy")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray head for the whole test session: pinned CPUs and object store, no dashboard, auth off.

    Yields the GCS address (for driver subprocesses). On teardown Ray is shut down and no process of
    this Ray session may survive it.
    """
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    context = ray.init(address="local", num_cpus=2, object_store_memory=256 * 1024**2,
                       include_dashboard=False, log_to_driver=False)
    session = Path(context.address_info["session_dir"]).name
    yield context.address_info["gcs_address"]
    ray.shutdown()
    survivors = _processes_mentioning(session, wait_s=20)
    assert not survivors, f"Ray processes of session {session} survived ray.shutdown(): {survivors}"


def _processes_mentioning(text: str, wait_s: float) -> list[str]:
    """Command lines of live processes whose command line contains `text`, after waiting up to wait_s for them
    to exit."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if text in cmd:
                    found.append(f"{proc.name}: {cmd[:160]}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)
