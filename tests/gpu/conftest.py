"""One small policy for the GPU tests, built on the device in seconds: BPE tokenizer + `1.4m` Llama + SFT."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import pytest
import torch

from answerkey.envs.synthetic import SyntheticEnv
from answerkey.pretrain.bootstrap import tiny_policy
from tests.gpu import DEVICE, synchronize

SFT_STEPS = 300 if DEVICE == "cuda" else 150  # enough for some correct answers, so groups' rewards differ


@dataclass
class Policy:
    env: SyntheticEnv
    model: torch.nn.Module  # fp32 on DEVICE; copy it before changing it
    tokenizer: object

    def copy(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        return copy.deepcopy(self.model).to(dtype)


@pytest.fixture(scope="session")
def policy() -> Policy:
    env = SyntheticEnv(difficulty=1, train_size=2000, test_size=64)
    start = time.perf_counter()
    model, tokenizer = tiny_policy(env, preset="1.4m", sft_steps=SFT_STEPS, device=DEVICE)
    synchronize()
    card = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(f"\n[gpu] {card}, torch {torch.__version__}; policy: 1.4m preset, {SFT_STEPS} SFT steps on "
          f"{DEVICE} in {time.perf_counter() - start:.1f} s")
    return Policy(env, model, tokenizer)
