"""Shared fixtures: a BPE tokenizer trained on the synthetic world and tiny Llama models, built locally
in well under a second (no hub downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from answerkey import chat
from answerkey.envs.synthetic import SyntheticEnv
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.pretrain.model import build_model
from answerkey.pretrain.tokenizer import train_bpe

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_env() -> SyntheticEnv:
    return SyntheticEnv(difficulty=2, train_size=5000, test_size=200)


@pytest.fixture(scope="session")
def tokenizer(synthetic_env):
    return train_bpe([chat.render(c) for c in solution_conversations(synthetic_env)], vocab_size=384)


@pytest.fixture
def make_model(tokenizer):
    def make(seed: int = 0, dtype: torch.dtype = torch.float32, preset: str = "tiny"):
        model = build_model(preset, len(tokenizer), chat.stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id, seed=seed)
        return model.to(dtype)

    return make
