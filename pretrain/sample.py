"""Look at what a tokenizer and a checkpoint do: the token viewer, document continuation and a chat REPL.

    answerkey tokenize --tokenizer runs/base/tokenizer "What is 12 + 30?"    # pieces and ids
    answerkey sample runs/base/model "Alice has 3 apples" -n 4 --temperature 0.8
    answerkey chat runs/sft/model              # or: echo "What is 2 + 3?" | answerkey chat runs/sft/model

`sample` treats the checkpoint as the document simulator a base model is: the prompt is
`<|endoftext|>` + the prefix (a document start, as in pretraining) and each continuation stops at
the next `<|endoftext|>` / `<|im_end|>` or after `--max-new-tokens`. `chat` renders the whole
conversation with the chat template after every user line and samples the assistant's reply until
`<|im_end|>`; `/reset` forgets the conversation, `/quit` or end of input leaves. Both sample with
the torch engine (`rollout/torch_engine.py`), seeded, on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from rich.text import Text

from answerkey import chat
from answerkey.pretrain.tokenizer import load_tokenizer, vocab_bytes
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine

COLORS = ("on grey23", "on dark_blue", "on dark_green", "on dark_red", "on purple4")


def pieces(tokenizer, text: str) -> list[tuple[int, str]]:
    """(id, piece) per token of `text`: a special token as itself, any other as its bytes (escaped if not
    UTF-8)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    by_id = {i: b for b, i in vocab_bytes(tokenizer).items()}
    return [(i, by_id[i].decode("utf-8", errors="backslashreplace") if i in by_id
             else tokenizer.convert_ids_to_tokens(i))
            for i in ids]


def token_view(tokenizer, text: str) -> Text:
    """The text with each token on its own background colour, then `id:'piece'` per token (the talk's token
    viewer)."""
    out = Text()
    toks = pieces(tokenizer, text)
    for k, (_, piece) in enumerate(toks):
        out.append(piece, style=COLORS[k % len(COLORS)])
    out.append(f"\n{len(toks)} tokens: " + "  ".join(f"{i}:{piece!r}" for i, piece in toks))
    return out


def default_tokenizer():
    """A tokenizer trained on the spot on the synthetic world's conversations (when no --tokenizer is
    given)."""
    from answerkey.envs.synthetic import SyntheticEnv
    from answerkey.pretrain.bootstrap import solution_conversations
    from answerkey.pretrain.tokenizer import train_bpe

    return train_bpe([chat.render(c) for c in solution_conversations(SyntheticEnv(difficulty=2))],
                     vocab_size=384)


def engine(path: str | Path, seed: int = 0) -> TorchEngine:
    """The torch engine over a checkpoint directory whose tokenizer has the chat-format special tokens."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(path)  # raises naming tokenizer.json when it lacks the special tokens
    return TorchEngine(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer, seed=seed)


def continue_text(e: TorchEngine, prefix: str, n: int, sampling: SamplingParams) -> list[str]:
    """`n` continuations of a document that starts with `prefix`."""
    eot = e.tokenizer.convert_tokens_to_ids(chat.END_OF_TEXT)
    prompt = [eot, *e.tokenizer.encode(prefix, add_special_tokens=False)]
    return [c.text for c in e.generate([prompt], n, sampling)[0]]


def chat_loop(e: TorchEngine, lines: Iterable[str], write: Callable[[str], None], sampling: SamplingParams,
              system: str = "", ask: Callable[[], None] = lambda: None) -> list[chat.Message]:
    """Answer each user line in turn; returns the conversation as it stands at the end."""
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    ask()
    for line in lines:
        line = line.rstrip("\n")
        if line.strip() == "/quit":
            break
        if line.strip() == "/reset":
            messages = list(start)
            write("(conversation reset)")
        elif line.strip():
            try:
                prompt = chat.prompt_ids(e.tokenizer, [*messages, {"role": "user", "content": line}])
            except ValueError as exc:  # e.g. a special token typed as text: say so, keep the conversation
                write(f"error: {exc}")
                ask()
                continue
            messages.append({"role": "user", "content": line})
            reply = e.generate([prompt], 1, sampling)[0][0]
            # a special token sampled mid-reply cannot be rendered back as content; keep the words around it
            messages.append({"role": "assistant", "content": _plain(reply.text)})
            cut = "" if reply.finish_reason == "stop" else "  [cut at --max-new-tokens]"
            write(f"assistant> {reply.text}{cut}")
        ask()
    return messages


def _plain(text: str) -> str:
    for token in chat.SPECIAL_TOKENS:
        text = text.replace(token, "")
    return text
