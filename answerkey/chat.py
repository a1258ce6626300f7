"""The chat format, as one spec that the tokenizer, SFT, rollout and learner all use.

A conversation is rendered in ChatML, the format Qwen and many open models use:

    <|im_start|>system\\nYou are helpful.<|im_end|>\\n<|im_start|>user\\nWhat is 2 + 3?<|im_end|>\\n
    <|im_start|>assistant\\n#### 5<|im_end|>\\n

`<|im_end|>` ends every turn and is an end-of-sequence token for generation (as is `<|endoftext|>`,
which separates documents in pretraining). The tool-call tokens are reserved so a later tool-use env
does not have to resize the vocabulary. `CHAT_TEMPLATE` is the same rendering as a Jinja template;
it is saved into `tokenizer.json`'s config so `transformers` and vLLM render identically, and a test
pins `render()` against `tokenizer.apply_chat_template`.

`encode()` tokenizes a whole rendered conversation in one call (so the ids are exactly what the
template + tokenizer produce, with no drift at segment boundaries) and derives the loss mask from
character offsets: assistant content and its `<|im_end|>` are trained, role headers and the newline
between turns are not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TOOL_CALL_START = "<|tool_call|>"
TOOL_CALL_END = "<|/tool_call|>"
TOOL_RESULT_START = "<|tool_result|>"
TOOL_RESULT_END = "<|/tool_result|>"
PAD = "<|pad|>"

# Order is the id order in a tokenizer we train (ids 0..7); a pretrained tokenizer keeps its own ids.
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, PAD, TOOL_CALL_START, TOOL_CALL_END, TOOL_RESULT_START,
                  TOOL_RESULT_END)
# Generation stops at either; the learner trains on the stop token so the policy learns to stop.
STOP_TOKENS = (IM_END, END_OF_TEXT)
ROLES = ("system", "user", "assistant", "tool")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Message = Mapping[str, str]  # {"role": "user", "content": "..."}


def check_messages(messages: Sequence[Message], where: str = "messages") -> None:
    """Raise ValueError naming the message and field when a conversation is malformed."""
    if not messages:
        raise ValueError(f"{where}: a conversation needs at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"{where}[{i}]: expected an object with 'role' and 'content', "
                             f"got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}[{i}].role: expected one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"{where}[{i}].content: expected a string, got {type(content).__name__}")
        for token in SPECIAL_TOKENS:
            if token in content:
                raise ValueError(f"{where}[{i}].content: contains the special token {token} as text")


def turn_header(role: str) -> str:
    return f"{IM_START}{role}\n"


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as text, identical to `CHAT_TEMPLATE` rendered by Jinja."""
    text = "".join(f"{turn_header(m['role'])}{m['content']}{IM_END}\n" for m in messages)
    return text + (turn_header("assistant") if add_generation_prompt else "")


@dataclass(frozen=True)
class Encoded:
    """Token ids of a rendered conversation with a per-token loss mask (1 = train on this token)."""

    ids: list[int]
    mask: list[int]


def encode(tokenizer, messages: Sequence[Message], add_generation_prompt: bool = False) -> Encoded:
    """Tokenize a conversation once; mask = assistant content plus its `<|im_end|>`."""
    check_messages(messages)
    spans, text = [], ""
    for m in messages:
        text += turn_header(m["role"])
        start = len(text)
        text += m["content"] + IM_END
        if m["role"] == "assistant":
            spans.append((start, len(text)))
        text += "\n"
    if add_generation_prompt:
        text += turn_header("assistant")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(lo <= s and e <= hi for lo, hi in spans)) for s, e in enc["offset_mapping"]]
    return Encoded(ids=list(enc["input_ids"]), mask=mask)


def prompt_ids(tokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of a prompt that ends with the assistant header, ready to generate from."""
    return encode(tokenizer, messages, add_generation_prompt=True).ids


def stop_token_ids(tokenizer) -> list[int]:
    """Ids of the stop tokens this tokenizer has (a pretrained tokenizer may lack some)."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in STOP_TOKENS if t in vocab]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError(f"tokenizer has none of the stop tokens {STOP_TOKENS} and no eos_token")
    return ids
