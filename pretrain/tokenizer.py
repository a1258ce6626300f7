"""Train a byte-level BPE tokenizer with the chat-format special tokens, saved in Hugging Face format.

    tok = train_bpe(texts, vocab_size=512)
    save_tokenizer(tok, "runs/tok")          # tokenizer.json + tokenizer_config.json (chat template)
    AutoTokenizer.from_pretrained("runs/tok").apply_chat_template(messages)

Built on HF `tokenizers` (a well-kept Rust implementation): text is first split with the GPT-4
regex (letters, 1-3 digit numbers, punctuation runs and whitespace stay apart, so merges never cross
them), then mapped to bytes, so any string round-trips. The special tokens of `answerkey.chat` get
ids 0..7 and are never produced by merges; the chat template and the `<|im_end|>` EOS are part of the
saved config, so `transformers`, vLLM and our learner render and stop identically.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from answerkey import chat

# The split pattern of GPT-4's cl100k_base (tiktoken), with case-insensitive contractions.
GPT4_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_bpe(texts: Iterable[str], vocab_size: int, split_digits: bool = False) -> PreTrainedTokenizerFast:
    """Train BPE merges on `texts` until the vocabulary (256 bytes + specials + merges) has `vocab_size`.

    `split_digits` makes every digit its own token (as Llama 2 and DeepSeek do) instead of GPT-4's
    groups of up to three: small models then learn arithmetic digit by digit and generalize to
    unseen numbers, where a token per number forces them to memorize each pair.
    """
    min_size = 256 + len(chat.SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} (256 bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}") if split_digits else GPT4_SPLIT),
                                 behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(chat.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
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


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` (with the chat template) into `directory`."""
    tokenizer.save_pretrained(str(directory))
