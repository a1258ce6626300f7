"""`answerkey sft`: an assistant from a base model, trained on conversations (loss on assistant tokens only).

    answerkey sft examples/sft_tiny.toml --model.path=runs/base/model \
        --data.paths="['chats.jsonl']" [--resume]
    model_dir = run(SFTConfig(data=ConversationsConfig(paths=["chats.jsonl"]), model=StartConfig(path=...)))

Conversations are JSONL rows `{"messages": [{"role": ..., "content": ...}, ...]}`, rendered with the
chat template and tokenized once by `chat.encode`, whose mask trains each assistant turn's content
and its `<|im_end|>` and never a role header or the newline between turns.

Packing (`data.pack`): conversations, in a seeded shuffled order, fill rows of `data.seq_len`
tokens one after another (next-fit; a conversation that does not fit starts the next row). Within
a row, position ids restart at 0 for each conversation and the attention mask is block-diagonal
causal — a (N, 1, L, L) bool mask that `transformers` hands to SDPA unchanged — so no token sees
another conversation and a packed row computes exactly the per-conversation losses (a test
compares with one conversation per row). Left to itself, transformers infers such a mask from
restarting position ids only when it gets no attention mask and no KV cache, but Llama's config has
`use_cache=True`, so a plain `model(input_ids, position_ids=...)` builds a cache, skips the
inference, and silently attends across conversations. So this module always passes the explicit
mask (and `use_cache=False`, in `answerkey.model.forward_logits`). A conversation longer than
`data.seq_len` is cut, and the count is printed.

The loop, metrics, checkpoints and resume are the pretraining ones (`pretrain/loop.py`, metrics
under `sft/`); the output `run_dir/model` is what `answerkey rl --model.path=` starts from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from answerkey import chat
from answerkey.pretrain import corpus
from answerkey.pretrain.config import SFTConfig
from answerkey.pretrain.loop import Batch, OnStep, Rows, Stage, resume_point, torch_threads, train
from answerkey.pretrain.tokenizer import load_tokenizer
from answerkey.rundir import RunDir

Conversation = list[dict[str, str]]


def read_conversations(paths: Sequence[str | Path]) -> list[Conversation]:
    """Every conversation of the JSONL files, checked; errors name the file and line."""
    out = []
    for path in corpus.corpus_files(paths):
        for number, row in corpus.jsonl_rows(path):
            where = f"{path}:{number}"
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list):
                raise corpus.CorpusError(f"{where}: expected an object with a 'messages' list")
            chat.check_messages(messages, where=f"{where}: messages")
            if not any(m["role"] == "assistant" for m in messages):
                raise corpus.CorpusError(f"{where}: the conversation has no assistant turn (nothing to "
                                         "train on)")
            out.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return out


def split(conversations: list[Conversation],
          fraction: float) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out) by a hash of each conversation's JSON (stable, duplicates on one side)."""
    heldout = [corpus.is_heldout(json.dumps(c, sort_keys=True), fraction) for c in conversations]
    return ([c for c, h in zip(conversations, heldout, strict=True) if not h],
            [c for c, h in zip(conversations, heldout, strict=True) if h])


class PackedRows(Rows):
    """Encoded conversations laid out in rows of at most `seq_len` tokens, packed or one per row."""

    def __init__(self, examples: Sequence[chat.Encoded], seq_len: int, pad_id: int, packed: bool,
                 seed: int = 0):
        self.packed, self.seq_len = packed, seq_len
        order = np.random.default_rng(seed).permutation(len(examples)) if packed else range(len(examples))
        rows: list[list[chat.Encoded]] = []
        for i in order:
            e = examples[i]
            if packed and rows and sum(len(x.ids) for x in rows[-1]) + min(len(e.ids), seq_len) <= seq_len:
                rows[-1].append(e)
            else:
                rows.append([e])
        n = len(rows)
        self.ids = np.full((n, seq_len), pad_id, dtype=np.int64)
        self.mask = np.zeros((n, seq_len), dtype=np.int64)  # 1 = token trained as a target
        self.segment = np.full((n, seq_len), -1, dtype=np.int64)  # conversation within the row; -1 = padding
        self.position = np.zeros((n, seq_len), dtype=np.int64)
        self.length = np.zeros(n, dtype=np.int64)
        self.cut = sum(len(e.ids) > seq_len for e in examples)
        for r, row in enumerate(rows):
            at = 0
            for s, e in enumerate(row):
                k = min(len(e.ids), seq_len)
                self.ids[r, at : at + k], self.mask[r, at : at + k] = e.ids[:k], e.mask[:k]
                self.segment[r, at : at + k], self.position[r, at : at + k] = s, np.arange(k)
                at += k
            self.length[r] = at

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fill(self) -> float:
        """Fraction of row slots holding a real token."""
        return float(self.length.sum()) / max(self.ids.size, 1)

    def batch(self, index: Sequence[int]) -> Batch:
        index = np.asarray(index)
        L = int(self.length[index].max())
        seg = torch.from_numpy(self.segment[index, :L])
        # a target is trained when the mask says so and it belongs to the same conversation as its context
        loss_mask = torch.from_numpy(self.mask[index, 1:L]) * (seg[:, 1:] == seg[:, :-1])
        ids = torch.from_numpy(self.ids[index, :L])
        if not self.packed:
            return Batch(ids, loss_mask.float(), attention_mask=(seg >= 0).long())
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        block = (seg[:, :, None] == seg[:, None, :]) & causal  # (N, L, L)
        return Batch(ids, loss_mask.float(), block[:, None], torch.from_numpy(self.position[index, :L]))


def encode_all(tokenizer, conversations: list[Conversation]) -> list[chat.Encoded]:
    return [chat.encode(tokenizer, c) for c in conversations]


def heldout_batches(rows: PackedRows, limit: int, micro_batch: int) -> list[Batch]:
    index = list(range(len(rows)))[: limit or None]
    return [rows.batch(index[i : i + micro_batch]) for i in range(0, len(index), micro_batch)]


def sample_prompts(cfg: SFTConfig, tokenizer, heldout: list[Conversation]) -> list[list[int]]:
    """run.samples as user messages, or the first two held-out conversations up to their first assistant
    turn."""
    if cfg.run.samples:
        return [chat.prompt_ids(tokenizer, [{"role": "user", "content": s}]) for s in cfg.run.samples]
    firsts = [c[: next(i for i, m in enumerate(c) if m["role"] == "assistant")] for c in heldout[:2]]
    return [chat.prompt_ids(tokenizer, c) for c in firsts if c]


def load_data(cfg: SFTConfig, tokenizer,
              console: Console) -> tuple[PackedRows, PackedRows, list[Conversation]]:
    d = cfg.data
    conversations = read_conversations(d.paths)
    if d.heldout_paths:
        train_c, heldout_c = conversations, read_conversations(d.heldout_paths)
    else:
        train_c, heldout_c = split(conversations, d.heldout_fraction)
    if not train_c or not heldout_c:
        raise ValueError(f"data.heldout_fraction ({d.heldout_fraction}) left {len(train_c)} training and "
                         f"{len(heldout_c)} held-out conversations of {len(conversations)} in {d.paths}; "
                         "both must be > 0")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else chat.stop_token_ids(tokenizer)[0]
    train_rows = PackedRows(encode_all(tokenizer, train_c), d.seq_len, pad, d.pack, cfg.train.seed)
    heldout_rows = PackedRows(encode_all(tokenizer, heldout_c), d.seq_len, pad, d.pack)
    console.print(f"conversations: {len(train_c)} training in {len(train_rows)} rows of {d.seq_len} tokens "
                  f"({train_rows.fill:.0%} filled, {'packed' if d.pack else 'one per row'}), "
                  f"{len(heldout_c)} held out")
    cut = train_rows.cut + heldout_rows.cut
    if cut:
        console.print(f"[yellow]warning:[/] {cut} conversation(s) longer than data.seq_len = {d.seq_len} "
                      "were cut")
    return train_rows, heldout_rows, heldout_c


def last_user(rendered: str) -> str:
    """The content of the last user turn of a rendered prompt."""
    return rendered.rsplit(chat.turn_header("user"), 1)[-1].split(chat.IM_END)[0]


def run(cfg: SFTConfig, console: Console | None = None, resume: bool = False,
        on_step: OnStep | None = None) -> Path:
    """SFT as `cfg` says; returns the final HF checkpoint directory (run_dir/model)."""
    console = console or Console()
    hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(cfg.model.path)
    if not tokenizer.chat_template:
        tokenizer.chat_template = chat.CHAT_TEMPLATE
    rundir = RunDir.create(cfg, resume=resume, prefix="sft")
    resume_from = resume_point(rundir, resume, console)
    model = AutoModelForCausalLM.from_pretrained(resume_from / "model" if resume_from else cfg.model.path,
                                                 dtype=torch.float32)
    limit = model.config.max_position_embeddings
    if cfg.data.seq_len > limit:
        raise ValueError(f"data.seq_len ({cfg.data.seq_len}) exceeds the model's {limit} positions "
                         f"({cfg.model.path})")
    train_rows, heldout_rows, heldout_c = load_data(cfg, tokenizer, console)
    def show(prompt: list[int], text: str) -> str:
        return f"{last_user(tokenizer.decode(prompt, skip_special_tokens=False))!r} -> {text!r}"

    heldout = heldout_batches(heldout_rows, cfg.run.eval_rows, cfg.train.micro_batch_size)
    stage = Stage("sft", train_rows, heldout, sample_prompts(cfg, tokenizer, heldout_c), show)
    try:
        with torch_threads(cfg.train.threads):
            return train(stage, model, tokenizer, cfg.train, rundir, console, resume_from, on_step)
    finally:
        rundir.close()
