"""The BPE tokenizer: round trips, the special tokens, ids equal to an independent tiktoken encoder, saved
files."""

from __future__ import annotations

import json

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, GenerationConfig

from answerkey import chat, cli
from answerkey.pretrain.tokenizer import (
    GPT4_SPLIT,
    load_tokenizer,
    train_bpe,
    train_tokenizer,
    vocab_bytes,
)
from tests.pretrain_data import TEXTS, plain_tokenizer_dir

VARIED = TEXTS[:4] + ["", " ", "\n", "a", "🙂", "''", "I'LL we'Re", "x" * 100, "1 22 333 4444 55555",
                      "\x00\x01\x7f"]


@pytest.fixture(scope="module", params=["hf", "rustbpe"])
def tok(request):
    """Trained by HF tokenizers, or by rustbpe and exported to the same HF form (`from_ranks`)."""
    return train_bpe(TEXTS, vocab_size=400, trainer=request.param)


def reference_encoder(tokenizer) -> tiktoken.Encoding:
    """tiktoken over the saved merges (as ranks = ids) and the same split regex: an independent BPE
    encoder."""
    specials = {t: tokenizer.convert_tokens_to_ids(t) for t in chat.SPECIAL_TOKENS}
    return tiktoken.Encoding("answerkey-test", pat_str=GPT4_SPLIT, mergeable_ranks=vocab_bytes(tokenizer),
                             special_tokens=specials)


def test_special_tokens_have_ids_0_to_7_and_encode_as_one_token_each(tok):
    assert [tok.convert_tokens_to_ids(t) for t in chat.SPECIAL_TOKENS] == list(range(8))
    text = f"{chat.IM_START}user\nhi{chat.IM_END}\n{chat.END_OF_TEXT}x{chat.TOOL_CALL_START}{chat.PAD}"
    ids = tok.encode(text, add_special_tokens=False)
    assert [i for i in ids if i < 8] == [1, 2, 0, 4, 3]
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert len(tok) == 400


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_unicode_text_round_trips(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(chat.SPECIAL_TOKENS)), max_size=6))
def test_text_mixed_with_special_tokens_round_trips_and_matches_tiktoken(tok, parts):
    text = "".join(parts)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert ids == reference_encoder(tok).encode(text, allowed_special="all")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("ab 1\n\t'sé日🙂.,-_") + ["'s", "ll", "  ", "fox", "99"]),
                max_size=40).map("".join))
def test_ids_equal_an_independent_tiktoken_encoder_built_from_the_merges(tok, text):
    want = reference_encoder(tok).encode(text, disallowed_special=())
    assert tok.encode(text, add_special_tokens=False) == want


@pytest.mark.parametrize("trainer", ["hf", "rustbpe"])
def test_ids_equal_tiktoken_on_varied_text_for_both_digit_modes(trainer):
    for split_digits in (False, True):
        tok = train_bpe(TEXTS, vocab_size=400, split_digits=split_digits, trainer=trainer)
        pattern = GPT4_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}") if split_digits else GPT4_SPLIT
        ref = tiktoken.Encoding("t", pat_str=pattern, mergeable_ranks=vocab_bytes(tok), special_tokens={})
        for text in VARIED:
            assert tok.encode(text, add_special_tokens=False) == ref.encode(text), (split_digits, text)
        assert (len(tok.encode("12345", add_special_tokens=False)) == 5) == split_digits


def test_saved_directory_loads_in_transformers_with_template_and_stop_ids(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (tmp_path / "book.txt").write_text(TEXTS[0] * 5)
    tok = train_tokenizer([corpus, tmp_path / "book.txt", "and a text"], vocab_size=400,
                          out_dir=tmp_path / "tok")
    assert tok.get_vocab() == train_bpe([*TEXTS, TEXTS[0] * 5, "and a text"], 400).get_vocab()
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "#### 5"}]
    assert hf.apply_chat_template(messages, tokenize=False) == chat.render(messages)
    gen = GenerationConfig.from_pretrained(tmp_path / "tok")
    assert hf.convert_tokens_to_ids(chat.IM_END) in gen.eos_token_id and gen.pad_token_id == hf.pad_token_id
    assert load_tokenizer(tmp_path / "tok").encode("x y") == tok.encode("x y")


def test_a_tokenizer_without_the_chat_tokens_is_refused_naming_the_file(tmp_path, capsys):
    path = plain_tokenizer_dir(tmp_path / "plain")
    missing = r"plain/tokenizer.json: missing the special token\(s\) \['<\|im_start\|>', '<\|im_end\|>'\]"
    with pytest.raises(ValueError, match=missing):
        load_tokenizer(path)
    assert cli.main(["tokenize", "--tokenizer", str(path), "hello"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "tokenizer.json: missing the special token(s)" in out and "Traceback" not in out
    with pytest.raises(FileNotFoundError, match="nowhere/tokenizer.json"):
        load_tokenizer(tmp_path / "nowhere")


def test_answerkey_tokenize_prints_pieces_and_ids(tmp_path, capsys):
    tok = train_tokenizer(TEXTS, vocab_size=300, out_dir=tmp_path / "tok")
    assert cli.main(["tokenize", "--tokenizer", str(tmp_path / "tok"), f"the fox{chat.IM_END}"]) == 0
    out = capsys.readouterr().out
    ids = tok.encode(f"the fox{chat.IM_END}", add_special_tokens=False)
    assert f"{len(ids)} tokens:" in out and f"{ids[-1]}:'{chat.IM_END}'" in out and ids[-1] == 2
    assert cli.main(["tokenize", "What is 2 + 3?"]) == 0  # the default tokenizer (synthetic world)
    assert "tokens:" in capsys.readouterr().out
