"""Train a byte-level BPE tokenizer with the chat-format special tokens, saved in Hugging Face format.

    tok = train_tokenizer([Path("corpus.jsonl"), "or a text"], vocab_size=512, out_dir="runs/tok")
    tok = load_tokenizer("runs/tok")         # checks the special tokens, naming the file
    AutoTokenizer.from_pretrained("runs/tok").apply_chat_template(messages)
    tok = train_bpe(texts, vocab_size=512)   # in memory, nothing written (trainer="rustbpe": faster)

`save_tokenizer` writes `tokenizer.json`, `tokenizer_config.json` + `chat_template.jinja` (the chat
template) and `generation_config.json` whose `eos_token_id` lists `<|im_end|>` and `<|endoftext|>`,
so `transformers` (`AutoTokenizer`, `GenerationConfig`), vLLM and the learner load it and stop alike.

Built on HF `tokenizers` (a well-kept Rust implementation): text is first split with the GPT-4
regex (letters, 1-3 digit numbers, punctuation runs and whitespace stay apart, so merges never cross
them), then mapped to bytes, so any string round-trips. The special tokens of `answerkey.chat` get
ids 0..7 and are never produced by merges; the chat template and the `<|im_end|>` EOS are part of the
saved config, so `transformers`, vLLM and our learner render and stop identically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from answerkey import chat
from answerkey.pretrain.corpus import file_documents

# The split pattern of GPT-4's cl100k_base (tiktoken), with case-insensitive contractions.
GPT4_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def split_pattern(split_digits: bool = False) -> str:
    """The pre-tokenizer regex: GPT-4's, or with `\\p{N}` alone when every digit is its own token."""
    return GPT4_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}") if split_digits else GPT4_SPLIT


def train_bpe(texts: Iterable[str], vocab_size: int, split_digits: bool = False,
              trainer: str = "hf") -> PreTrainedTokenizerFast:
    """Train BPE merges on `texts` until the vocabulary (256 bytes + specials + merges) has `vocab_size`.

    `split_digits` makes every digit its own token (as Llama 2 and DeepSeek do) instead of GPT-4's
    groups of up to three: small models then learn arithmetic digit by digit and generalize to
    unseen numbers, where a token per number forces them to memorize each pair. `trainer` is "hf"
    (HF `tokenizers`' BpeTrainer) or "rustbpe" (nanochat's trainer, faster, see benchmarks/tokenizer.py;
    its merge ranks are exported to the same HF tokenizer by `from_ranks`).
    """
    min_size = 256 + len(chat.SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} (256 bytes + special tokens), got "
                         f"{vocab_size}")
    if trainer == "rustbpe":
        return _train_rustbpe(texts, vocab_size, split_pattern(split_digits))
    if trainer != "hf":
        raise ValueError(f"unknown BPE trainer {trainer!r}; expected 'hf' or 'rustbpe'")
    tok = Tokenizer(models.BPE())
    _byte_level(tok, split_pattern(split_digits))
    bpe = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(chat.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=bpe)
    return wrap(tok)


def _byte_level(tok: Tokenizer, pattern: str) -> None:
    """Split with `pattern` (merges never cross its pieces), then map bytes to BPE symbols, and back on
    decode."""
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                 use_regex=False)])
    tok.decoder = decoders.ByteLevel()


def _train_rustbpe(texts: Iterable[str], vocab_size: int, pattern: str) -> PreTrainedTokenizerFast:
    try:
        import rustbpe
    except ImportError:
        raise ImportError("trainer 'rustbpe' needs the rustbpe package (pip install rustbpe)") from None
    raw = rustbpe.Tokenizer()
    raw.train_from_iterator(iter(texts), vocab_size - len(chat.SPECIAL_TOKENS), pattern=pattern)
    return from_ranks({bytes(b): r for b, r in raw.get_mergeable_ranks()}, pattern)


def from_ranks(ranks: dict[bytes, int], pattern: str = GPT4_SPLIT) -> PreTrainedTokenizerFast:
    """A tiktoken-style BPE (byte string -> rank) as our HF tokenizer: specials 0..7, then the tokens by rank.

    Every split of a token into two tokens becomes a merge at that token's rank, which is tiktoken's
    rule (merge the adjacent pair whose concatenation ranks lowest), so the ids equal tiktoken's.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_char = bytes_to_unicode()
    text = lambda b: "".join(to_char[x] for x in b)  # noqa: E731
    n = len(chat.SPECIAL_TOKENS)
    vocab = {t: i for i, t in enumerate(chat.SPECIAL_TOKENS)} | {text(b): r + n for b, r in ranks.items()}
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [(token[:i], token[i:]) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        merges += [(text(a), text(b)) for a, b in sorted(splits, key=lambda s: (ranks[s[0]], ranks[s[1]]))]
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    _byte_level(tok, pattern)
    tok.add_special_tokens(list(chat.SPECIAL_TOKENS))
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A `transformers` tokenizer around a raw `tokenizers` one, with our special tokens and template."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=chat.IM_END,
        pad_token=chat.PAD,
        unk_token=None,
        additional_special_tokens=[t for t in chat.SPECIAL_TOKENS if t not in (chat.IM_END, chat.PAD)],
    )
    fast.chat_template = chat.CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> Path:
    """Write the tokenizer files, the chat template and a `generation_config.json` stopping at
    `<|im_end|>`."""
    directory = Path(directory)
    tokenizer.save_pretrained(str(directory))
    stop_ids, pad_id = chat.stop_token_ids(tokenizer), tokenizer.pad_token_id
    GenerationConfig(eos_token_id=stop_ids, pad_token_id=pad_id).save_pretrained(directory)
    return directory


def train_tokenizer(corpus: Iterable[str | Path], vocab_size: int, out_dir: str | Path | None = None,
                    split_digits: bool = False, trainer: str = "hf") -> PreTrainedTokenizerFast:
    """Train on `corpus` (each item a text, or a `Path` to a corpus file read as documents) and save to
    `out_dir`."""
    tokenizer = train_bpe(_texts(corpus), vocab_size, split_digits, trainer)
    if out_dir is not None:
        save_tokenizer(tokenizer, out_dir)
    return tokenizer


def _texts(corpus: Iterable[str | Path]) -> Iterator[str]:
    for item in corpus:
        if isinstance(item, Path):
            yield from file_documents(item)
        else:
            yield item


def load_tokenizer(directory: str | Path):
    """The tokenizer saved in `directory`, checked to have the chat-format special tokens as single tokens."""
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a Hugging Face tokenizer directory)")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    check_special_tokens(tokenizer, path)
    return tokenizer


def check_special_tokens(tokenizer, source: str | Path) -> None:
    """Raise naming `source` when a token the pipeline needs is missing or not one special token."""
    added = {t.content for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values() if t.special}
    missing = [t for t in REQUIRED_TOKENS if t not in added
               or len(tokenizer.encode(t, add_special_tokens=False)) != 1]
    if missing:
        raise ValueError(f"{source}: missing the special token(s) {missing}; the chat format and the corpus "
                         f"shards need {list(REQUIRED_TOKENS)} (train one with `train_tokenizer`)")


def vocab_bytes(tokenizer) -> dict[bytes, int]:
    """The byte string of every non-special token -> its id (the BPE ranks, as tiktoken wants them)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {ch: b for b, ch in bytes_to_unicode().items()}
    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
    specials = set(chat.SPECIAL_TOKENS)
    return {bytes(to_byte[ch] for ch in token): i for token, i in vocab.items() if token not in specials}


# the tokens every stage relies on: document separator (pretraining), turn markers and stop (chat)
REQUIRED_TOKENS = (chat.END_OF_TEXT, chat.IM_START, chat.IM_END)
