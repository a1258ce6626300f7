"""Find the one final answer a model response commits to, or decide that it commits to none.

    >>> extract("so the sum is 12.\\n\\nThe answer is $\\\\boxed{\\\\frac{3}{4}}$.").answer
    '\\\\frac{3}{4}'
    >>> extract("#### 1,234").answer
    '1,234'
    >>> extract("I think it's 3").reason        # no marker: never fall back to stray numbers
    'no final-answer marker'
    >>> extract("either \\\\boxed{3 \\\\text{ or } 4}").reason
    'hedged answer'

Order (the first rule that finds a marker decides; a later rule is never a fallback for a failed
earlier one): the last `\\boxed{…}` / `\\fbox{…}` / `\\boxed x` (brace-matched; an unclosed last box
means the response was cut off: no answer); else the last `#### x` line; else the last explicit
"final answer is / the answer is / Answer:" statement, markdown bold included. Separate boxes are
never joined. Only the last `TAIL_CHARS` of a response are scanned, so a 100k-character degenerate
response costs the same as a short one. Everything here is linear-time string scanning (no
backtracking regex), which is why it runs in the caller's process without a timeout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TAIL_CHARS = 4000  # final answers live at the end; a box longer than this is not an answer anyway

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASH = re.compile(r"####[ \t]*([^\n]*)")
# "The final answer is", "the answer is:", "Answer:", "**Final Answer:**", "Final Answer: **73**".
_STATEMENT = re.compile(
    r"(?i)(?:\b(?:final\s+answer|the\s+answer)(?:\*\*|__)?\s*(?:is\b\s*:?|[:=])|\banswer(?:\*\*|__)?\s*:)"
)
_HEDGE = re.compile(r"(?i)(?<![a-z\\])(?:or|either|maybe|possibly|perhaps)(?![a-z])")


@dataclass(frozen=True)
class Extracted:
    """The committed final answer (raw text), or None with the reason there is none."""

    answer: str | None
    reason: str = ""  # why there is no answer; "" when there is one


def extract(response: str, hedge_ok: bool = False) -> Extracted:
    """The final answer of `response` (see module docstring). `hedge_ok`: the gold itself says "or"."""
    text = response.replace("\x00", "")
    if len(text) > TAIL_CHARS:
        text = text[-TAIL_CHARS:]
    found = _from_box(text) or _from_hash(text) or _from_statement(text)
    if found is None:
        return Extracted(None, "no final-answer marker")
    answer, marker = found
    if answer is None:
        return Extracted(None, f"unclosed {marker}")
    answer = answer.strip().strip("*_ \t").strip()
    if not answer:
        return Extracted(None, f"empty {marker}")
    if not hedge_ok and _HEDGE.search(answer):
        return Extracted(None, "hedged answer")
    return Extracted(answer)


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None


def _from_box(text: str) -> tuple[str | None, str] | None:
    """Content of the last box; (None, "\\boxed") if it never closes; None if there is no box."""
    last = _last_match(_BOX, text)
    if last is None:
        return None
    i = last.end()
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        content = brace_group(text, i)
        return (content, "\\boxed")
    token = re.match(r"[^\s$]+", text[i:])  # `\boxed 5`: the next token
    return (token.group(0) if token else None, "\\boxed")


def brace_group(text: str, start: int) -> str | None:
    """The content of the `{…}` group opening at `text[start]`, or None when it never closes.

    Escaped braces (`\\{`, `\\}`) are content, not grouping, so `\\boxed{\\{1,2\\}}` works.
    """
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def _from_hash(text: str) -> tuple[str | None, str] | None:
    matches = _HASH.findall(text)
    if not matches:
        return None
    return (matches[-1], "####")


def _from_statement(text: str) -> tuple[str | None, str] | None:
    last = _last_match(_STATEMENT, text)
    if last is None:
        return None
    rest = text[last.end() :].lstrip(" \t*_")
    return (_first_math_or_sentence(rest), "answer statement")


_MATH_DELIMS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))


def _first_math_or_sentence(rest: str) -> str | None:
    """`$…$` (or `\\(…\\)`, `\\[…\\]`) when the statement starts with math, else its first sentence."""
    for left, right in _MATH_DELIMS:
        if rest.startswith(left):
            end = rest.find(right, len(left))
            while end > 0 and rest[end - 1] == "\\":  # `\$` inside the math is a dollar sign
                end = rest.find(right, end + 1)
            return rest[len(left) : end] if end != -1 else None
    line = rest.split("\n", 1)[0]
    end = re.search(r"\.(?:\s|$)|\*\*|__", line)  # sentence end or closing bold; "3.5" is kept whole
    return line[: end.start()] if end else line
