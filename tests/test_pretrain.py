"""Pretraining: beats a bigram model, writes a loadable HF checkpoint that `answerkey rl` accepts, resumes
exactly.

The corpus (tests/pretrain_data.py) is made here: short documents whose second sentence repeats the
names of the first (a bigram model cannot know which) plus some rendered conversations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from answerkey import chat, cli
from answerkey import driver as rl_driver
from answerkey.config import load_config
from answerkey.pretrain import corpus, pretrain
from answerkey.pretrain.config import load_pretrain_config
from answerkey.pretrain.tokenizer import train_bpe
from answerkey.rundir import RunDir
from tests.pretrain_data import write_corpus

pytestmark = pytest.mark.slow  # pretrains models: make check leaves it out

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pretrain_tiny.toml"
QUIET = Console(quiet=True)


def overrides(corpus_path: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"--data.paths=['{corpus_path}']", f"--run.out_dir={out}", f"--run.name={name}",
            "--tokenizer.vocab_size=300", "--data.seq_len=64", "--train.batch_size=8",
            "--train.micro_batch_size=8", "--train.lr=1e-2", "--train.warmup_steps=5",
            "--run.sample_every=30", "--run.eval_every=30", "--train.threads=1", *extra]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The run directory of 60 pretraining steps on the tiny corpus."""
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg = load_pretrain_config(EXAMPLE, overrides(write_corpus(tmp / "corpus.jsonl"), tmp, "base",
                                                  "--train.steps=60"))
    assert pretrain.run(cfg, QUIET) == tmp / "base" / "model"
    return tmp / "base"


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def bigram_losses(shards: corpus.Shards) -> tuple[float, float]:
    """Held-out loss of an add-one-smoothed bigram fit on the training shard, and of the best bigram for the
    held-out shard itself (fit on it: no bigram model can do better)."""
    V = shards.info["vocab_size"]
    train, held = (np.asarray(s, dtype=np.int64) for s in (shards.train, shards.heldout))
    counts = np.ones((V, V))
    np.add.at(counts, (train[:-1], train[1:]), 1)
    smoothed = -np.log((counts / counts.sum(1, keepdims=True))[held[:-1], held[1:]]).mean()
    oracle = np.zeros((V, V))
    np.add.at(oracle, (held[:-1], held[1:]), 1)
    best = -np.log((oracle / np.maximum(oracle.sum(1, keepdims=True), 1))[held[:-1], held[1:]]).mean()
    return float(smoothed), float(best)


def test_pretraining_reaches_a_heldout_loss_below_a_bigram_models(base):
    heldout = [r["pretrain/heldout_loss"] for r in rows(base) if "pretrain/heldout_loss" in r]
    smoothed, best = bigram_losses(corpus.Shards.open(base / "data"))
    assert len(heldout) == 2 and heldout[-1] < heldout[0]
    assert heldout[-1] < best < smoothed, (heldout, best, smoothed)


def test_the_run_directory_has_metrics_curve_samples_shards_and_checkpoints(base):
    steps = [r for r in rows(base) if "pretrain/loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 61))
    assert all(r["pretrain/tokens_per_s"] > 0 and r["pretrain/lr"] > 0 for r in steps)
    assert steps[-1]["pretrain/tokens"] == 60 * 8 * 63  # every row trains seq_len - 1 targets
    assert steps[-1]["pretrain/loss"] < steps[0]["pretrain/loss"] / 2
    samples = [json.loads(line) for line in (base / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [30, 30, 60, 60] and samples[0]["prompt"] == chat.END_OF_TEXT
    assert (base / "loss.png").stat().st_size > 10_000
    assert [p.name for p in (base / "checkpoints").iterdir()] == ["step_000060"]
    info = json.loads((base / "data" / "shards.json").read_text())
    assert info["train_documents"] + info["heldout_documents"] == 800 and info["heldout_documents"] > 10


def test_the_checkpoint_loads_in_transformers_and_generate_stops_at_im_end(base):
    model = AutoModelForCausalLM.from_pretrained(base / "model")
    tok = AutoTokenizer.from_pretrained(base / "model")
    im_end = tok.convert_tokens_to_ids(chat.IM_END)
    assert im_end in model.generation_config.eos_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "who does carol see?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=30, do_sample=False)
    out = generated[0, prompt["input_ids"].shape[1]:].tolist()
    assert out[-1] == im_end and len(out) < 30, tok.decode(out)  # the corpus' conversations taught it to stop


def test_answerkey_rl_accepts_the_pretrain_checkpoint(ray_session, base, tmp_path, capsys):
    args = [f"--model.path={base / 'model'}", f"--run.out_dir={tmp_path}", "--run.name=rl", "--run.steps=1",
            "--rollout.problems_per_step=4", "--rollout.group_size=2", "--rollout.workers=1",
            "--rollout.max_new_tokens=8"]
    assert cli.main(["config", "examples/tiny_cpu.toml", *args]) == 0
    capsys.readouterr()
    cfg = load_config("examples/tiny_cpu.toml", args)
    driver = rl_driver.start(cfg, RunDir.create(cfg), console=QUIET)
    try:
        metrics = driver.train_step()
    finally:
        driver.close()
    assert metrics["sync/verified"] == 1.0  # the workers generate with the learner's exact weights
    assert sum(v for k, v in metrics.items() if k.startswith("reward/status/")) == 4 * 2


def interrupt_at(step: int):
    def hook(s: int, metrics: dict) -> None:
        if s == step:
            raise KeyboardInterrupt(f"stopped after step {s}")

    return hook


def test_a_resumed_run_equals_an_uninterrupted_one(base, tmp_path):
    extra = [f"--tokenizer.path={base / 'tokenizer'}", "--train.steps=6", "--run.checkpoint_every=3",
             "--run.eval_every=2", "--run.sample_every=3", "--train.batch_size=4",
             "--train.micro_batch_size=2"]
    args = lambda name: overrides(base.parent / "corpus.jsonl", tmp_path, name, *extra)  # noqa: E731
    pretrain.run(load_pretrain_config(EXAMPLE, args("whole")), QUIET)
    with pytest.raises(KeyboardInterrupt):
        pretrain.run(load_pretrain_config(EXAMPLE, args("split")), QUIET, on_step=interrupt_at(4))
    assert [r["step"] for r in rows(tmp_path / "split") if "pretrain/loss" in r] == [1, 2, 3, 4]
    pretrain.run(load_pretrain_config(EXAMPLE, args("split")), QUIET, resume=True)
    keys = ("pretrain/loss", "pretrain/heldout_loss", "pretrain/lr", "pretrain/grad_norm", "pretrain/tokens")
    whole, split = ([{k: r.get(k) for k in ("step", *keys)} for r in rows(tmp_path / name)]
                    for name in ("whole", "split"))
    assert split == whole and len(whole) == 6
    a, b = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("whole", "split"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    samples = [(tmp_path / name / "samples.jsonl").read_text() for name in ("whole", "split")]
    assert samples[0] == samples[1]
    for change, named in (("--data.seq_len=24", "data.seq_len=64"), ("--train.seed=3", "train.seed=0")):
        with pytest.raises(ValueError, match=f"--resume: .* was trained with {named}; this run has"):
            pretrain.run(load_pretrain_config(EXAMPLE, [*args("split"), change]), QUIET, resume=True)
    other = write_corpus(tmp_path / "other.jsonl", documents=300, seed=5)
    with pytest.raises(ValueError, match="--resume: data.paths / data.heldout_fraction no longer match"):
        pretrain.run(load_pretrain_config(EXAMPLE, overrides(other, tmp_path, "split", *extra)), QUIET,
                     resume=True)


def test_answerkey_pretrain_and_sample_from_the_cli(base, tmp_path, capsys):
    args = overrides(base.parent / "corpus.jsonl", tmp_path, "cli", "--train.steps=2",
                     f"--tokenizer.path={base / 'tokenizer'}")
    argv = ["pretrain", str(EXAMPLE), *args]
    assert cli.main(argv) == 0
    assert (tmp_path / "cli" / "model" / "config.json").exists()
    assert cli.main(["sample", str(base / "model"), "alice likes", "-n", "2", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and out.count("alice likes") >= 2
    assert cli.main(argv) == 2  # the run directory exists: refuses to overwrite without --resume
    assert "pass --resume" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("content, message", [
    (b"", "bad.jsonl: empty file"),
    (b'{"text": "ok"}\n\n{"text": "a\xff"}\n', "bad.jsonl:3: not valid UTF-8 (byte 0xff"),
    (b'{"text": "ok"}\nnot json\n', "bad.jsonl:2: not valid JSON"),
    (b'{"text": "ok"}\n{"body": "x"}\n',
     "bad.jsonl:2: expected an object with a string 'text' field, it has no 'text' field"),
    (b'{"text": 3}\n', "bad.jsonl:1: expected an object with a string 'text' field, 'text' is int"),
    (b"   \n", "bad.jsonl: empty file"),
])
def test_a_bad_corpus_file_fails_naming_the_file_and_line(tmp_path, capsys, content, message):
    (tmp_path / "bad.jsonl").write_bytes(content)
    argv = ["pretrain", str(EXAMPLE), *overrides(tmp_path / "bad.jsonl", tmp_path, "bad")]
    assert cli.main(argv) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert message in out and "Traceback" not in out, out


def test_a_text_file_that_is_not_utf8_names_its_line(tmp_path):
    (tmp_path / "book.txt").write_bytes(b"line one\nline two\nthree \xc3(\n")
    with pytest.raises(corpus.CorpusError, match=r"book.txt:3: not valid UTF-8 \(byte 0xc3"):
        list(corpus.documents([tmp_path]))
    with pytest.raises(corpus.CorpusError, match="nowhere.jsonl: no such file"):
        list(corpus.documents([tmp_path / "nowhere.jsonl"]))


def test_shards_hold_every_document_after_an_end_of_text_token(tmp_path):
    docs = [f"document number {i}" for i in range(50)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = train_bpe(docs, 300)
    shards = corpus.encode_corpus(tok, [tmp_path / "c.jsonl"], tmp_path / "data", heldout_fraction=0.2)
    eot = tok.convert_tokens_to_ids(chat.END_OF_TEXT)
    decoded = {split: tok.decode(np.asarray(getattr(shards, split)).tolist(), skip_special_tokens=False)
               for split in ("train", "heldout")}
    train_docs = [d for d in docs if not corpus.is_heldout(d, 0.2)]
    held_docs = [d for d in docs if corpus.is_heldout(d, 0.2)]
    assert decoded["train"] == "".join(chat.END_OF_TEXT + d for d in train_docs)
    assert decoded["heldout"] == "".join(chat.END_OF_TEXT + d for d in held_docs) and 0 < len(held_docs) < 25
    assert shards.train.dtype == np.uint16 and int(shards.train[0]) == eot
    assert isinstance(shards.train, np.memmap)
    windows = pretrain.TokenWindows(shards.train, 8)
    batch = windows.batch([0, 1])  # consecutive windows share one token: each token is a target once
    assert batch.input_ids.tolist() == [shards.train[0:8].tolist(), shards.train[7:15].tolist()]
    assert len(windows) == (len(shards.train) - 1) // 7 and batch.loss_mask.shape == (2, 7)


def test_a_time_budget_ends_the_run_early_with_the_final_evaluation_and_checkpoint(base, tmp_path):
    extra = [f"--tokenizer.path={base / 'tokenizer'}", "--train.steps=1000", "--train.time_budget_s=1.0",
             "--run.eval_every=0", "--run.sample_every=0", "--run.checkpoint_every=0"]
    slow = lambda step, metrics: time.sleep(0.3)  # noqa: E731 - every step takes >= 0.3 s of wall time
    cfg = load_pretrain_config(EXAMPLE, overrides(base.parent / "corpus.jsonl", tmp_path, "budget", *extra))
    pretrain.run(cfg, QUIET, on_step=slow)
    trained = [r for r in rows(tmp_path / "budget") if "pretrain/loss" in r]
    assert 3 <= len(trained) <= 20  # stopped by the budget, long before 1000 steps
    assert "pretrain/heldout_loss" in trained[-1]
    assert all("pretrain/heldout_loss" not in r for r in trained[:-1])
    assert (tmp_path / "budget" / "checkpoints" / f"step_{len(trained):06d}").is_dir()
    assert (tmp_path / "budget" / "model" / "model.safetensors").is_file()
