"""One response against one gold, in-process and without a time bound: the function the pool runs.

    >>> check("... so $\\\\boxed{\\\\dfrac{1}{2}}$", "0.5").status.value
    'correct'
    >>> check("\\\\boxed{\\\\sqrt{2}}", "\\\\frac{2}{\\\\sqrt 2}", sympy_ok=False) is None   # needs sympy
    True

`check(..., sympy_ok=False)` is the fast path the caller runs in its own process: extraction,
normalization, multiple-choice letters, words, numbers in a base, exact rationals, and the structure
of tuples/intervals/sets/lists whose elements are plain numbers. It returns None when a leaf needs
sympy; the pool then runs `check(..., sympy_ok=True)` in a worker process it can kill. Structure is
read from the text before sympy sees it: `(a, b]` keeps its brackets and order, `\\{…\\}` and bare
comma lists are order-free. This module does not bound time itself (see `rewards/deadline_pool.py`).
"""

from __future__ import annotations

import re

from answerkey.rewards.math.extract import brace_group, extract
from answerkey.rewards.math.parse import (
    based_number,
    choice,
    guard,
    has_relation,
    normalize,
    rational,
    split_assignment,
    text_word,
)
from answerkey.rewards.score import Score, Status

_OPEN = {"(": ")", "[": "]"}
MAX_RAW_CHARS = 2000  # an extracted answer longer than this is not normalized at all


def _unboxed(gold: str) -> str:
    """A gold given as `\\boxed{5}` (some datasets store it so) is the bare `5`."""
    text = gold.strip()
    if text.startswith("\\boxed{") and text.endswith("}"):
        inner = brace_group(text, len("\\boxed"))
        if inner is not None and len(inner) == len(text) - len("\\boxed{}"):
            return inner
    return gold


class NeedSympy(Exception):
    """A leaf comparison the fast path cannot decide."""


class AnswerUnparseable(ValueError):
    """The response's answer could not be read (parser failure or static guard)."""


class GoldUnparseable(ValueError):
    """The gold answer could not be read: a dataset problem, reported as `Status.error`."""


def check(response: str, gold: str, sympy_ok: bool = True) -> Score | None:
    """Score `response` against `gold`; None only when `sympy_ok` is False and sympy is needed."""
    gold_n = normalize(_unboxed(gold))
    if not gold_n:
        return Score.failed(Status.error, f"gold {gold!r:.80} is empty after normalization")
    found = extract(response, hedge_ok=bool(re.search(r"(?i)\bor\b", gold)))
    if found.answer is None:
        return Score.failed(Status.no_answer, found.reason)
    detail = found.answer[:100]
    if len(found.answer) > MAX_RAW_CHARS:  # bounds the fast path's own work in the caller's process
        return Score.failed(Status.unparseable,
                            f"answer of {len(found.answer)} characters (> {MAX_RAW_CHARS})")
    answer_n = normalize(found.answer)
    if not answer_n:
        return Score.failed(Status.no_answer, f"empty answer {detail!r}")
    try:
        same = _same_answer(gold_n, answer_n, sympy_ok)
    except NeedSympy:
        return None
    except AnswerUnparseable as exc:
        return Score.failed(Status.unparseable, f"{detail!r}: {exc}"[:200])
    except GoldUnparseable as exc:
        return Score.failed(Status.error, f"gold {gold!r:.80}: {exc}"[:200])
    return Score(1.0, Status.correct, detail) if same else Score(0.0, Status.wrong, detail)


def _same_answer(gold: str, answer: str, sympy_ok: bool) -> bool:
    """Kinds read from the gold decide how the answer is read (the gold is the trusted side)."""
    if gold == answer:
        return True
    if (letter := choice(gold)) is not None:
        return choice(answer) == letter
    if (based := based_number(gold)) is not None:
        got = based_number(answer)
        if got is None:  # "204" for 204_5: the digits, in the base the question asked for
            return answer.upper() == based[0]
        return got == based
    if (word := text_word(gold)) is not None:
        return text_word(answer) == word
    g_lhs, g_rhs = split_assignment(gold)
    a_lhs, a_rhs = split_assignment(answer)
    # `x=5` vs `5` and `x=5` vs `x=5` compare values; `y=2x` vs `x=-2y` or `2x-y=0` stay relations.
    same_target = g_lhs == a_lhs if g_lhs and a_lhs else not has_relation(a_rhs if g_lhs else g_rhs)
    if same_target:
        gold, answer = g_rhs, a_rhs
    return compare(gold, answer, sympy_ok)


def compare(gold: str, answer: str, sympy_ok: bool) -> bool:
    """Structure from the text (brackets, lists), numbers exactly, the rest through sympy."""
    if gold == answer:
        return True
    g_seq, a_seq = bracketed(gold), bracketed(answer)
    if g_seq and a_seq:
        (g_open, g_close, g_items), (a_open, a_close, a_items) = g_seq, a_seq
        if g_open == "\\{" or a_open == "\\{":
            return (g_open, a_open) == ("\\{", "\\{") and _unordered(g_items, a_items, sympy_ok)
        if (g_open, g_close) != (a_open, a_close) or len(g_items) != len(a_items):
            return False
        return all(compare(g, a, sympy_ok) for g, a in zip(g_items, a_items, strict=True))
    g_list, a_list = top_level_items(gold), top_level_items(answer)
    if len(g_list) > 1 or len(a_list) > 1:
        if g_seq or a_seq or "\\pm" in gold + answer or "\\mp" in gold + answer:
            return _leaf(gold, answer, sympy_ok)  # e.g. (0,1) vs 0<x<1, \{1,2\} vs 1,2
        return _unordered(g_list, a_list, sympy_ok)
    return _leaf(gold, answer, sympy_ok)


def _unordered(golds: list[str], answers: list[str], sympy_ok: bool) -> bool:
    if len(golds) != len(answers):
        return False
    left = list(answers)
    for g in golds:
        hit = next((k for k, a in enumerate(left) if compare(g, a, sympy_ok)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def _leaf(gold: str, answer: str, sympy_ok: bool) -> bool:
    g_value, a_value = rational(gold), rational(answer)
    if g_value is not None and a_value is not None:
        return g_value == a_value
    if (reason := guard(answer)) is not None:
        raise AnswerUnparseable(f"refused: {reason}")
    if (reason := guard(gold)) is not None:
        raise GoldUnparseable(f"refused: {reason}")
    if not sympy_ok:
        raise NeedSympy
    # Here, not at the top: sympy loads only in the processes that reach this line (the pool's
    # workers), never in the trainer's process that runs the fast path.
    from answerkey.rewards.math import equiv

    try:
        g_expr = equiv.parse(gold)
    except Exception as exc:  # noqa: BLE001 - the parser raises many types; any is "cannot read"
        raise GoldUnparseable(f"{type(exc).__name__}: {exc}"[:120]) from None
    try:
        a_expr = equiv.parse(answer)
    except Exception as exc:  # noqa: BLE001
        raise AnswerUnparseable(f"{type(exc).__name__}: {exc}"[:120]) from None
    try:
        return equiv.equivalent(g_expr, a_expr)
    except (OverflowError, RecursionError, MemoryError) as exc:  # sizes the guards could not see
        raise AnswerUnparseable(f"too large to evaluate ({type(exc).__name__})") from None


def bracketed(s: str) -> tuple[str, str, list[str]] | None:
    """(`open`, `close`, items) when one bracket pair encloses all of `s` and holds a top-level comma.

    `(1,2]` → ("(", "]", ["1", "2"]); `\\{1,2\\}` → ("\\{", "\\}", …); `(0,1)\\cup(2,3)` → None.
    """
    if s.startswith("\\{") and s.endswith("\\}"):
        inner, pair = s[2:-2], ("\\{", "\\}")
        if _depth_never_negative(inner):
            return (*pair, top_level_items(inner))
        return None
    if len(s) < 2 or s[0] not in _OPEN or s[-1] not in ")]":
        return None
    inner = s[1:-1]
    items = top_level_items(inner)
    if len(items) < 2 or not _depth_never_negative(inner):
        return None
    return (s[0], s[-1], items)


def _depth_never_negative(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += 1 if ch in "([{" else -1 if ch in ")]}" else 0
        if depth < 0:
            return False
    return depth == 0


def top_level_items(s: str) -> list[str]:
    """`s` split at commas outside brackets (a half-open `(a,b]` counts as brackets)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(s[start:i])
            start = i + 1
    items.append(s[start:])
    return [item.strip() for item in items]
