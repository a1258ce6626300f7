"""A plain exact-number checker: extract one final answer, compare it to a numeric gold exactly.

    >>> float(score("so 9 / 3 = 3.\\n#### 3", "3"))
    1.0
    >>> score("The answer is \\\\boxed{\\\\frac{1}{2}}", "0.5").status.value
    'correct'
    >>> score("I think it's 3", "3").status.value   # no final-answer marker: no fallback to stray numbers
    'no_answer'

The final answer is the content of the last brace-matched `\\boxed{...}`, else the text after the
last `####` on its line. Numbers compare as exact rationals (`0.5 == 1/2`, `0.333 != 1/3`);
thousands separators are accepted only in groups of three. Anything that is not a plain number
(expressions, sets, intervals) is `unparseable` here: the sympy checker (`rewards/math/`) handles
those. This module never runs untrusted code and needs no timeout.
"""

from __future__ import annotations

import re
from fractions import Fraction

from answerkey.rewards.score import Score, Status

_HASH_ANSWER = re.compile(r"####[ \t]*([^\n]*)")
_NUMBER = re.compile(r"[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?|[-+]?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` (braces matched), or None if there is none."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth = 0
        for i in range(start + len("\\boxed"), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start + len("\\boxed{") : i]
        start = text.rfind("\\boxed{", 0, start)  # unclosed: an earlier, complete box may exist
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a response commits to: last `\\boxed{}`, else last `#### x`; None if neither."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    matches = _HASH_ANSWER.findall(text)
    if matches and matches[-1].strip():
        return matches[-1].strip()
    return None


def parse_number(answer: str) -> Fraction | None:
    """An exact rational from a plain numeric answer (`1,234`, `-0.5`, `$12`, `\\frac{3}{4}`, `3/4`)."""
    text = answer.strip().replace("\\$", "").replace("$", "").replace("\\!", "").replace("−", "-")
    text = text.removesuffix(".").strip()
    frac = _FRAC.fullmatch(text)
    if frac:
        text = f"{frac.group(1)}/{frac.group(2)}"
    parts = text.split("/")
    if len(parts) > 2:
        return None
    values = []
    for part in parts:
        part = part.strip()
        if not _NUMBER.fullmatch(part):
            return None
        values.append(Fraction(part.replace(",", "")))
    if len(values) == 2:
        return None if values[1] == 0 else values[0] / values[1]
    return values[0]


def score(response: str, gold: str) -> Score:
    """Reward 1.0 when the response's final answer equals the numeric `gold` exactly, else 0.0."""
    gold_value = parse_number(gold)
    if gold_value is None:
        raise ValueError(f"gold answer {gold!r} is not a plain number; the exact checker cannot grade it")
    answer = extract_answer(response)
    if answer is None:
        return Score.failed(Status.no_answer)
    value = parse_number(answer)
    if value is None:
        return Score.failed(Status.unparseable, answer[:100])
    if value == gold_value:
        return Score(1.0, Status.correct, answer[:100])
    return Score(0.0, Status.wrong, answer[:100])
