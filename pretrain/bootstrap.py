"""A tiny starting policy for an env, made locally in seconds: BPE tokenizer + Llama preset + SFT warm-up.

    model, tokenizer = tiny_policy(SyntheticEnv(difficulty=1), sft_steps=100)

The tokenizer is trained on the env's training conversations (each problem answered with its worked
solution), the model is built from a preset, and a few SFT steps (`Learner.sft_step`, loss on the
assistant tokens only) teach it the answer format. This is the starting point of the learning test
and of `make demo` until the full pretraining pipeline (web text -> base model -> SFT) lands; it
needs problems with `meta["solution"]` and never touches the held-out split.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from answerkey import chat
from answerkey.config import LearnerConfig
from answerkey.envs.base import Env
from answerkey.learner import Learner
from answerkey.model import build_model
from answerkey.pretrain.tokenizer import train_bpe
from answerkey.rollout.engine import SamplingParams


def solution_conversations(env: Env, terse_fraction: float = 0.0,
                           seed: int = 0) -> list[list[dict[str, str]]]:
    """Every training problem asked and answered: with its worked solution, or (a `terse_fraction` of them,
    chosen by a hash of the problem id and `seed`) with the bare final answer `#### x`, as a demonstrator
    who does not always show their work would write it."""
    if not 0 <= terse_fraction <= 1:
        raise ValueError(f"terse_fraction must be in [0, 1], got {terse_fraction!r}")
    problems = [p for p in env.problems("train") if p.meta.get("solution")]
    if not problems:
        raise ValueError(f"{type(env).__name__} has no training problems with meta['solution'] to warm up on")

    def reply(p) -> str:
        terse = _unit(f"{seed}/{p.id}") < terse_fraction
        return f"#### {p.answer}" if terse else p.meta["solution"]
    return [p.messages() + [{"role": "assistant", "content": reply(p)}] for p in problems]


def _unit(text: str) -> float:
    """A uniform number in [0, 1) fixed by `text` (the same on every machine and run)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def tiny_policy(env: Env, preset: str = "tiny", vocab_size: int = 384, sft_steps: int = 100, lr: float = 3e-3,
                batch_size: int = 32, seed: int = 0, schedule: str = "constant",
                on_step: Callable[[int, dict], None] | None = None, device: str = "cpu",
                terse_fraction: float = 0.0):
    """(model, tokenizer): a freshly built policy after `sft_steps` of SFT on the env's training problems,
    answered with worked solutions (a `terse_fraction` of them with the bare answer instead)."""
    conversations = solution_conversations(env, terse_fraction, seed)
    texts = [chat.render(c) for c in conversations]
    if terse_fraction:  # the tokenizer still sees every worked solution, whichever style the warm-up shows
        texts += [p.meta["solution"] for p in env.problems("train") if p.meta.get("solution")]
    tokenizer = train_bpe(texts, vocab_size)
    model = build_model(preset, len(tokenizer), chat.stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id,
                        seed=seed)
    model = model.to(device)
    cfg = LearnerConfig(lr=lr, warmup_steps=min(20, sft_steps // 10), schedule=schedule, min_lr_ratio=0.05)
    learner = Learner(model, cfg, SamplingParams(), total_steps=sft_steps)
    examples = [chat.encode(tokenizer, c) for c in conversations]
    rng = random.Random(seed)
    for step in range(sft_steps):
        metrics = learner.sft_step(rng.sample(examples, min(batch_size, len(examples))))
        if on_step:
            on_step(step, metrics)
    return model.eval(), tokenizer
