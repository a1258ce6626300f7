"""SFT: the exact loss mask, packing without attention across conversations, the run, resume and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.numpy import load_file

from answerkey import chat, cli
from answerkey.model import build_model, forward_logits, nll_sum
from answerkey.pretrain import sft
from answerkey.pretrain.config import load_sft_config
from answerkey.pretrain.loop import Batch
from answerkey.pretrain.tokenizer import save_tokenizer, train_bpe
from tests.pretrain_data import conversation, document, plain_tokenizer_dir, write_conversations

pytestmark = pytest.mark.slow  # SFT runs: make check leaves it out

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sft_tiny.toml"
QUIET = Console(quiet=True)
SEED_KEEPING_ORDER = 1  # np.random.default_rng(1).permutation(2) == [0, 1]


@pytest.fixture(scope="module")
def bytes_tokenizer():
    """No merges: every byte is one token, so positions can be counted by hand."""
    return train_bpe(["x"], vocab_size=264)


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    """A freshly built tiny Llama + tokenizer saved as a checkpoint directory (what pretraining writes)."""
    import random

    rng = random.Random(1)
    texts = [document(rng) for _ in range(200)] + [chat.render(conversation(rng)) for _ in range(200)]
    tok = train_bpe(texts, 320)
    model = build_model("tiny", len(tok), chat.stop_token_ids(tok), pad_id=tok.pad_token_id,
                        max_positions=256)
    path = tmp_path_factory.mktemp("start")
    model.save_pretrained(path)
    save_tokenizer(tok, path)
    return path


def test_the_mask_trains_assistant_content_and_im_end_only_at_hand_counted_positions(bytes_tokenizer):
    tok = bytes_tokenizer
    hi = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    enc = chat.encode(tok, hi)
    # <|im_start|> u s e r \n h i <|im_end|> \n <|im_start|> a s s i s t a n t \n o k <|im_end|> \n
    #  0           1-5        6 7  8          9  10         11-20                 21 22 23       24
    assert len(enc.ids) == 25 and [i for i, m in enumerate(enc.mask) if m] == [21, 22, 23]
    assert enc.ids[23] == tok.convert_tokens_to_ids(chat.IM_END) and tok.decode(enc.ids[21:23]) == "ok"
    two = hi + [{"role": "user", "content": "and?"}, {"role": "assistant", "content": "no"}]
    enc2 = chat.encode(tok, two)
    # second turn: 25 <|im_start|>, 26-30 user\n, 31-34 and?, 35 <|im_end|>, 36 \n, 37 <|im_start|>,
    # 38-47 assistant\n, 48-49 no, 50 <|im_end|>, 51 \n
    assert [i for i, m in enumerate(enc2.mask) if m] == [21, 22, 23, 48, 49, 50] and len(enc2.ids) == 52

    rows = sft.PackedRows([enc, enc2], seq_len=80, pad_id=tok.pad_token_id, packed=True,
                          seed=SEED_KEEPING_ORDER)
    assert len(rows) == 1 and rows.length[0] == 77 and rows.ids[0, :77].tolist() == enc.ids + enc2.ids
    assert rows.position[0, :77].tolist() == list(range(25)) + list(range(52))  # positions restart
    batch = rows.batch([0])
    trained = [t + 1 for t in torch.nonzero(batch.loss_mask[0]).flatten().tolist()]  # target of position t
    assert trained == [21, 22, 23] + [25 + p for p in (21, 22, 23, 48, 49, 50)]
    mask = batch.attention_mask[0, 0]  # (L, L) True = may attend
    assert torch.equal(mask[:25, :25], torch.ones(25, 25, dtype=torch.bool).tril())
    assert torch.equal(mask[25:, 25:], torch.ones(52, 52, dtype=torch.bool).tril())
    assert not mask[25:, :25].any() and not mask[:25, 25:].any()  # no token sees the other conversation


def conversations_of_varied_length(n: int = 12) -> list[list[dict]]:
    import random

    rng = random.Random(3)
    out = []
    for _ in range(n):
        c = conversation(rng)
        for _ in range(rng.randint(0, 2)):
            c += [{"role": "user", "content": "more"},
                  {"role": "assistant", "content": document(rng)[: rng.randint(5, 60)]}]
        out.append(c)
    return out


def mean_loss(model, batches: list[Batch]) -> torch.Tensor:
    tokens = sum(b.tokens for b in batches)
    return sum(nll_sum(forward_logits(model, b.input_ids, b.attention_mask, "fp32", b.position_ids),
                       b.input_ids[:, 1:], b.loss_mask) for b in batches) / tokens


def test_packed_and_one_per_row_losses_and_gradients_are_equal(start):
    from transformers import AutoModelForCausalLM

    from answerkey.pretrain.tokenizer import load_tokenizer

    tok, model = load_tokenizer(start), AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
    examples = sft.encode_all(tok, conversations_of_varied_length())
    packed = sft.PackedRows(examples, seq_len=200, pad_id=tok.pad_token_id, packed=True, seed=0)
    single = sft.PackedRows(examples, seq_len=200, pad_id=tok.pad_token_id, packed=False)
    assert len(packed) < len(single) == len(examples)  # several conversations share a row
    losses, grads = [], []
    for rows in (packed, single):
        model.zero_grad()
        loss = mean_loss(model, [rows.batch(range(len(rows)))])
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert packed.batch(range(len(packed))).tokens == single.batch(range(len(single))).tokens
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    # the same packed rows with plain causal attention and running positions see across conversations
    leaky = [Batch(b.input_ids, b.loss_mask) for b in [packed.batch(range(len(packed)))]]
    assert abs(float(mean_loss(model, leaky).detach()) - float(losses[0])) > 1e-3


def sft_args(start: Path, chats: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"--model.path={start}", f"--data.paths=['{chats}']", f"--run.out_dir={out}",
            f"--run.name={name}", "--data.seq_len=128", "--train.batch_size=4", "--train.micro_batch_size=2",
            "--train.lr=3e-3", "--train.warmup_steps=2", "--run.eval_every=3", "--run.sample_every=3",
            "--run.sample_tokens=12", "--train.threads=1", *extra]


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sft_resumes_exactly_and_writes_a_checkpoint_for_rl(start, tmp_path):
    chats = write_conversations(tmp_path / "chats.jsonl", 120)
    args = lambda name: sft_args(start, chats, tmp_path, name, "--train.steps=6", "--run.checkpoint_every=3")  # noqa: E731
    out = sft.run(load_sft_config(EXAMPLE, args("whole")), QUIET)

    def stop(step: int, metrics: dict) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sft.run(load_sft_config(EXAMPLE, args("split")), QUIET, on_step=stop)
    sft.run(load_sft_config(EXAMPLE, args("split")), QUIET, resume=True)
    whole, split = rows_of(tmp_path / "whole"), rows_of(tmp_path / "split")
    keys = ("step", "sft/loss", "sft/heldout_loss", "sft/lr", "sft/grad_norm", "sft/tokens")
    assert [{k: r.get(k) for k in keys} for r in split] == [{k: r.get(k) for k in keys} for r in whole]
    assert [r["step"] for r in whole] == [1, 2, 3, 4, 5, 6]
    assert whole[-1]["sft/heldout_loss"] < whole[2]["sft/heldout_loss"]
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("whole", "split"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    before = load_file(start / "model.safetensors")
    assert any(not np.array_equal(before[k], a[k]) for k in a)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "chat_template.jinja"):
        assert (out / name).exists(), name
    assert (tmp_path / "whole" / "loss.png").stat().st_size > 10_000
    samples = [json.loads(line) for line in (tmp_path / "whole" / "samples.jsonl").read_text().splitlines()]
    assert samples and samples[0]["prompt"].endswith(chat.turn_header("assistant"))


def test_answerkey_sft_and_chat_from_the_cli(start, tmp_path, capsys):
    chats = write_conversations(tmp_path / "chats.jsonl", 60)
    assert cli.main(["sft", str(EXAMPLE), *sft_args(start, chats, tmp_path, "cli", "--train.steps=2")]) == 0
    model = tmp_path / "cli" / "model"
    capsys.readouterr()
    import subprocess
    import sys

    argv = [sys.executable, "-m", "answerkey.cli", "chat", str(model), "--max-new-tokens", "8"]
    proc = subprocess.run(argv, input="who does alice see?\n/reset\nhello\n", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("assistant> ") == 2 and "(conversation reset)" in proc.stdout


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
     "bad.jsonl:2: messages[0].role: expected one of ('system', 'user', 'assistant', 'tool'), got 'robot'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}',
     "bad.jsonl:2: the conversation has no assistant turn"),
    ('{"messages": "hi"}', "bad.jsonl:2: expected an object with a 'messages' list"),
    ('{"messages": [{"role": "user", "content": 3}]}',
     "bad.jsonl:2: messages[0].content: expected a string, got int"),
    ("[1, 2", "bad.jsonl:2: not valid JSON"),
])
def test_a_bad_conversation_fails_naming_the_file_and_line(start, tmp_path, capsys, line, message):
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n")
    assert cli.main(["sft", str(EXAMPLE), *sft_args(start, tmp_path / "bad.jsonl", tmp_path, "bad")]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert message in out and "Traceback" not in out, out


def test_sft_refuses_a_start_checkpoint_whose_tokenizer_lacks_the_chat_tokens(start, tmp_path, capsys):
    plain = plain_tokenizer_dir(tmp_path / "plain")
    chats = write_conversations(tmp_path / "chats.jsonl", 10)
    assert cli.main(["sft", str(EXAMPLE), *sft_args(plain, chats, tmp_path, "x")]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "plain/tokenizer.json: missing the special token(s)" in out
