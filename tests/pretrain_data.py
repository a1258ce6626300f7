"""Tiny corpora made in the tests: documents with structure a bigram model cannot capture, and conversations.

A document names two people and repeats them in a second sentence (which name comes back depends on the
first sentence, not on the previous token) and counts apples n then n + 1. Some documents are rendered
conversations, so a base model learns to end an assistant turn with `<|im_end|>`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from answerkey import chat

TEXTS = [
    "The quick brown fox jumps over the lazy dog's back; it's 1234567 o'clock!\n\n",
    "naïve café — 日本語のテキスト, 한국어, русский текст 🙂🙂👍🏽 \t tabs   and  spaces\r\n",
    "def f(x):\n    return x ** 2  # comment\n\n\nprint(f(12))",
    "aaaaaaaa bbbb aaaa ab ab ab abab 999 9999 99999 3.14159 1e-10 $100,000",
] * 30  # varied text for the tokenizer tests
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]
VERBS = ["likes", "sees", "helps", "calls"]


def document(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    v, n = rng.choice(VERBS), rng.randint(1, 8)
    return f"{a} {v} {b}. {b} {v} {a} back. {a} has {n} apples and {b} has {n + 1}."


def conversation(rng: random.Random) -> list[dict[str, str]]:
    a, b = rng.sample(NAMES, 2)
    return [{"role": "user", "content": f"who does {a} see?"},
            {"role": "assistant", "content": f"{a} sees {b}."}]


def write_corpus(path: Path, documents: int = 600, conversations: int = 200, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(documents + conversations):
            text = document(rng) if i % 4 or i >= 4 * conversations else chat.render(conversation(rng))
            f.write(json.dumps({"text": text}) + "\n")
    return path


def write_conversations(path: Path, n: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            c = conversation(rng)
            if rng.random() < 0.3:  # some multi-turn
                c += [{"role": "user", "content": "and then?"},
                      {"role": "assistant", "content": document(rng)}]
            f.write(json.dumps({"messages": c}) + "\n")
    return path


def plain_tokenizer_dir(path: Path) -> Path:
    """A byte-level BPE tokenizer without our special tokens, saved in HF format."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>").save_pretrained(str(path))
    return path
