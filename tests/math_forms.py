"""Rewrite a gold answer into responses that must score correct (equivalent forms) or wrong.

    >>> equivalent_forms("\\\\frac{3}{4}")[:3]
    ['\\\\boxed{\\\\frac{3}{4}}', 'The final answer is $\\\\frac{3}{4}$.', '\\\\boxed{\\\\dfrac{3}{4}}']

The rewrites are mechanical and chosen so that their verdict is certain: exact rational identities
(`3/4 = 0.75 = \\dfrac{6}{8}`), reordering of order-free lists, thousands separators, units, `x =`
prefixes, boxed vs "the answer is"; and wrong forms that change the value (off by one, sign,
truncated decimal), swap a tuple or flip an interval bracket. Used by tests/test_math_scripted.py
and benchmarks/math_checker.py.
"""

from __future__ import annotations

import re
from fractions import Fraction

from answerkey.rewards.math.check import bracketed, top_level_items
from answerkey.rewards.math.parse import normalize, rational


def _tex(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _decimal(value: Fraction) -> str | None:
    """The exact decimal of `value` when it terminates (denominator 2^a 5^b), else None."""
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return None
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
    scaled = str(int(abs(value) * 10**digits)).rjust(digits + 1, "0")
    text = f"{scaled[:-digits]}.{scaled[-digits:]}" if digits else scaled
    return ("-" if value < 0 else "") + text


def _truncated(value: Fraction, places: int) -> str:
    """`value` cut (not rounded) to `places` decimals: 1/7 -> 0.142857; never equal to a non-terminating
    value."""
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    return ("-" if value < 0 else "") + f"{digits[:-places]}.{digits[-places:]}"


def _thousands(n: int) -> str:
    return f"{n:,}"


def equivalent_forms(gold: str) -> list[str]:
    """Responses whose final answer equals `gold`."""
    dfrac = gold.replace(chr(92) + "frac", chr(92) + "dfrac")
    forms = [f"\\boxed{{{gold}}}", f"The final answer is ${gold}$.", f"\\boxed{{{dfrac}}}"]
    norm = normalize(gold)
    value = rational(norm)
    if value is not None:
        forms += [f"#### {_tex(value)}", f"\\boxed{{x = {_tex(value)}}}", f"**Answer:** {_tex(value)}",
                  f"\\boxed{{\\frac{{{2 * value.numerator}}}{{{2 * value.denominator}}}}}",
                  f"\\boxed{{{_tex(value)} \\text{{ cm}}}}"]
        if (dec := _decimal(value)) is not None:
            forms.append(f"So the answer is \\boxed{{{dec}}}.")
        if value.denominator == 1 and abs(value) >= 1000:
            forms.append(f"#### {_thousands(value.numerator)}")
        if value.denominator != 1 and value > 1:
            whole = value.numerator // value.denominator
            rest = value - whole
            forms.append(f"\\boxed{{{whole}\\frac{{{rest.numerator}}}{{{rest.denominator}}}}}")
        return forms
    items = top_level_items(norm)
    if len(items) > 1 and bracketed(norm) is None:
        forms.append(f"\\boxed{{{', '.join(reversed(items))}}}")  # order-free list
    seq = bracketed(norm)
    if seq and seq[0] == "\\{":
        forms.append(f"\\boxed{{\\{{{', '.join(reversed(seq[2]))}\\}}}}")
    if seq and seq[0] != "\\{":
        forms.append(f"\\boxed{{\\left{seq[0]} {' , '.join(seq[2])} \\right{seq[1]}}}")
    return forms


def wrong_forms(gold: str) -> list[str]:
    """Responses whose final answer differs from `gold`."""
    norm = normalize(gold)
    value = rational(norm)
    if value is not None:
        forms = [f"\\boxed{{{_tex(value + 1)}}}", f"#### {_tex(value - 1)}"]
        if value != 0:
            forms.append(f"\\boxed{{{_tex(-value)}}}")
        dec = _decimal(value)
        if dec is None:  # a non-terminating value, truncated as a model would write it (4 and 6 places)
            forms += [f"\\boxed{{{_truncated(value, 4)}}}", f"The answer is ${_truncated(value, 6)}$."]
        elif "." in dec and len(dec.split(".")[1]) > 1:
            forms.append(f"\\boxed{{{dec[:-1]}}}")
        return forms
    seq = bracketed(norm)
    if seq and seq[0] in "([" and seq[2][0] != seq[2][1]:
        forms = [f"\\boxed{{{seq[0]}{','.join(seq[2][::-1])}{seq[1]}}}"]  # swapped tuple / reversed interval
        flipped = {"(": "[", "[": "("}[seq[0]]
        if not any("infty" in item for item in seq[2][:1]):
            forms.append(f"\\boxed{{{flipped}{','.join(seq[2])}{seq[1]}}}")  # open <-> closed
        return forms
    if re.fullmatch(r"\\text\{\(?[A-E]\)?\}|\(?[A-E]\)?", gold.strip()):
        letter = re.search(r"[A-E]", gold).group(0)
        return [f"\\boxed{{{'A' if letter != 'A' else 'B'}}}"]
    if re.search(r"\\text\{[a-zA-Z ]+\}$", gold.strip()) and not re.search(r"\d", gold):
        return ["\\boxed{\\text{xyzzy}}"]
    if "=" in norm or "<" in norm or ">" in norm or "begin" in norm or len(top_level_items(norm)) > 1:
        return []  # relations, matrices, lists: covered by the hand-written table
    if any(op in norm for op in ("\\pm", "_", "\\cup", "\\in")):
        return []
    return [f"\\boxed{{\\left({gold}\\right)+1}}", f"\\boxed{{2\\left({gold}\\right)}}"]
