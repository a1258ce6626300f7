"""`answerkey pretrain`: a base model from a text corpus (tokenizer -> token shards -> next-token loss).

    answerkey pretrain examples/pretrain_tiny.toml --data.paths="['corpus.jsonl']" --run.name=base [--resume]
    model_dir = run(PretrainConfig(data=CorpusConfig(paths=["corpus.jsonl"])))    # -> runs/<name>/model

1. the tokenizer: `tokenizer.path`, or BPE trained on the training documents (`pretrain/tokenizer.py`);
2. the corpus encoded once into memory-mapped shards (`pretrain/corpus.py`), documents separated by
   `<|endoftext|>`, a hash-chosen `data.heldout_fraction` of them held out;
3. a Llama preset (`answerkey/model/presets.py`) trained on windows of `data.seq_len` tokens cut from the
   training shard (consecutive windows share one token, so every token is a target exactly once per
   epoch; attention runs across document boundaries, as in GPT-2), by the shared loop
   (`pretrain/loop.py`: AdamW, warmup + cosine, accumulation, held-out loss, samples, checkpoints).

The base model is a document simulator: its samples continue a document from `<|endoftext|>` +
a prefix. The run directory holds `tokenizer/`, `data/` (the shards), `metrics.jsonl`,
`samples.jsonl`, `loss.png`, `checkpoints/step_*/` and `model/` (the final HF checkpoint, with
tokenizer, chat template and a generation config that stops at `<|im_end|>` / `<|endoftext|>`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from answerkey import chat
from answerkey.model import build_model
from answerkey.pretrain import corpus
from answerkey.pretrain.config import PretrainConfig
from answerkey.pretrain.loop import Batch, OnStep, Rows, Stage, resume_point, torch_threads, train
from answerkey.pretrain.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from answerkey.rundir import RunDir


class TokenWindows(Rows):
    """Windows of `seq_len` tokens of a shard, each starting at the previous one's last token."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n = (len(tokens) - 1) // (seq_len - 1)

    def __len__(self) -> int:
        return self.n

    def batch(self, index) -> Batch:
        stride = self.seq_len - 1
        rows = np.stack([self.tokens[i * stride : i * stride + self.seq_len] for i in index]).astype(np.int64)
        return Batch(torch.from_numpy(rows), torch.ones(len(index), self.seq_len - 1))


def heldout_batches(tokens: np.ndarray, seq_len: int, limit: int, micro_batch: int) -> list[Batch]:
    """The held-out shard as full windows (at most `limit`, 0 = all) plus the partial tail window."""
    windows = TokenWindows(tokens, seq_len)
    full = list(range(len(windows)))[: limit or None]
    out = [windows.batch(full[i : i + micro_batch]) for i in range(0, len(full), micro_batch)]
    tail = tokens[len(windows) * (seq_len - 1) :]
    if len(tail) >= 2 and (not limit or len(full) < limit):
        ids = torch.from_numpy(np.asarray(tail, dtype=np.int64))[None]
        out.append(Batch(ids, torch.ones(1, len(tail) - 1)))
    return out


def prepare_tokenizer(cfg: PretrainConfig, run_dir: Path, resume: bool):
    """The run's tokenizer in run_dir/tokenizer: the run's own (resume), copied from tokenizer.path, or
    trained."""
    where = run_dir / "tokenizer"
    if resume and (where / "tokenizer.json").exists():
        return load_tokenizer(where)
    if cfg.tokenizer.path:
        tokenizer = load_tokenizer(cfg.tokenizer.path)
    else:
        f = cfg.data.heldout_fraction
        texts = (d for d in corpus.documents(cfg.data.paths) if not corpus.is_heldout(d, f))
        tokenizer = train_bpe(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.split_digits,
                              cfg.tokenizer.trainer)
    save_tokenizer(tokenizer, where)
    return tokenizer


def prepare_shards(cfg: PretrainConfig, tokenizer, run_dir: Path, resume: bool) -> corpus.Shards:
    """Encode the corpus into run_dir/data; a resumed run reuses its shards (and refuses a changed corpus)."""
    where = run_dir / "data"
    if resume and (where / "shards.json").exists():
        shards = corpus.Shards.open(where)
        files = corpus.corpus_files(cfg.data.paths)
        info = shards.info
        if (info["files"] == [str(f) for f in files] and info["bytes"] == [f.stat().st_size for f in files]
                and info["vocab_size"] == len(tokenizer)
                and info["heldout_fraction"] == cfg.data.heldout_fraction):
            return shards
        raise ValueError(f"--resume: data.paths / data.heldout_fraction no longer match the corpus this run "
                         f"encoded ({where / 'shards.json'}); resuming on other data would not continue the "
                         "run")
    shards = corpus.encode_corpus(tokenizer, cfg.data.paths, where, cfg.data.heldout_fraction)
    if len(shards.train) < cfg.data.seq_len:
        raise ValueError(f"data.seq_len ({cfg.data.seq_len}) is longer than the training shard "
                         f"({len(shards.train)} tokens of {shards.info['train_documents']} documents in "
                         f"{cfg.data.paths})")
    if len(shards.heldout) < 2:
        raise ValueError(f"data.heldout_fraction ({cfg.data.heldout_fraction}) held out no document of the "
                         f"{shards.info['train_documents']} in {cfg.data.paths}; raise it or add documents")
    return shards


def sample_prompts(cfg: PretrainConfig, tokenizer, heldout: np.ndarray) -> list[list[int]]:
    """`<|endoftext|>` + each prefix of run.samples; by default a blank document and a held-out document's
    start."""
    eot = tokenizer.convert_tokens_to_ids(chat.END_OF_TEXT)
    if cfg.run.samples:
        return [[eot, *tokenizer.encode(p, add_special_tokens=False)] for p in cfg.run.samples]
    first = heldout[1:9].tolist()
    first = first[: first.index(eot)] if eot in first else first
    return [[eot], [eot, *first]]


def run(cfg: PretrainConfig, console: Console | None = None, resume: bool = False,
        on_step: OnStep | None = None) -> Path:
    """Pretrain as `cfg` says; returns the final HF checkpoint directory (run_dir/model)."""
    console = console or Console()
    hf_logging.disable_progress_bar()
    rundir = RunDir.create(cfg, resume=resume, prefix="pretrain")
    tokenizer = prepare_tokenizer(cfg, rundir.path, resume)
    shards = prepare_shards(cfg, tokenizer, rundir.path, resume)
    info = shards.info
    console.print(f"corpus: {info['train_documents']} training documents ({info['train_tokens']:,} tokens), "
                  f"{info['heldout_documents']} held out ({info['heldout_tokens']:,} tokens); "
                  f"{len(tokenizer)}-token vocabulary")
    resume_from = resume_point(rundir, resume, console)
    if resume_from is not None:
        model = AutoModelForCausalLM.from_pretrained(resume_from / "model", dtype=torch.float32)
    else:
        model = build_model(cfg.model.preset, len(tokenizer), chat.stop_token_ids(tokenizer),
                            pad_id=tokenizer.pad_token_id, max_positions=cfg.model.max_positions,
                            seed=cfg.train.seed)
    T = cfg.data.seq_len
    stage = Stage("pretrain", TokenWindows(shards.train, T),
                  heldout_batches(shards.heldout, T, cfg.run.eval_rows, cfg.train.micro_batch_size),
                  sample_prompts(cfg, tokenizer, shards.heldout),
                  lambda prompt, text: f"{tokenizer.decode(prompt[1:])!r} -> {text!r}")
    try:
        with torch_threads(cfg.train.threads):
            return train(stage, model, tokenizer, cfg.train, rundir, console, resume_from, on_step)
    finally:
        rundir.close()
