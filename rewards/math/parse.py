"""Normalize an answer string, recognize the cheap kinds of answer, and guard the rest before sympy.

    >>> normalize("\\\\$1{,}000.\\\\text{ dollars}")
    '1000'
    >>> normalize("\\\\left( \\\\dfrac12, 3^\\\\circ \\\\right)")
    '(\\\\frac{1}{2},3)'
    >>> rational("2\\\\frac{1}{2}"), rational("0.25"), rational("1.5e3")
    (Fraction(5, 2), Fraction(1, 4), Fraction(1500, 1))

`normalize` applies to gold and response answers alike (cosmetic differences only: spacing macros,
`\\left/\\right`, `$`, units in `\\text{}`, degrees, percent signs, thousands separators in groups of
exactly three digits, `\\dfrac`, `\\frac12`, unicode). It never guesses: no ×100 for percent, no
rounding. `rational` reads a plain number (integers, decimals, fractions, mixed numbers, scientific
notation) as an exact `Fraction`: the fast path that decides most GSM8K and MATH items in the
caller's process. `choice`, `text_word` and `based_number` read multiple-choice letters, words and
`204_5`-style numbers. `guard` is the static check that refuses, before any sympy call, answers
whose evaluation could be enormous (huge powers, factorials, deep nesting).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_ANSWER_CHARS = 600  # a final answer longer than this is not one; also bounds sympy's input
MAX_DEPTH = 40  # brace/paren nesting; deeper input is adversarial and would recurse in the parser
MAX_DIGITS = 20_000  # largest integer power / factorial result we let sympy compute (in digits)

_SPACING = re.compile(
    r"(?<!\\)\\(?:[,;:! ]|quad|qquad|displaystyle|textstyle|left|right|big|Big|bigg|Bigg)(?![A-Za-z])")
_WRAPPERS = re.compile(
    r"\\(?:text|textbf|textit|mbox|mathrm|mathbf|mathit|textnormal|operatorname|bf|rm)\s*\{")
_UNICODE = {"−": "-", "–": "-", "—": "-", "×": "\\times ", "·": "\\cdot ", "π": "\\pi ", "√": "\\sqrt",
            "∞": "\\infty ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "°": "", "∪": "\\cup ", "\u00a0": " "}
_UNIT_WORDS = re.compile(
    r"(?i)(?<=[\d}).\s])\s*(?:(?:square|cubic|sq\.?)\s+)?"
    r"(?:dollars?|cents?|units?|degrees?|percent|inches|inch|feet|foot|ft|yards?|miles?|meters?|metres?|"
    r"cm|mm|km|m|kg|g|grams?|pounds?|lbs?|ounces?|oz|hours?|hrs?|minutes?|mins?|"
    r"seconds?|secs?|days?|weeks?|months?|years?|mph|liters?|litres?|ml|gallons?|cups?|people|students?|points?|"
    r"ways?|times|marbles?|apples?|coins?|tickets?|books?|pages?|eggs?|cookies?|boxes|bags?|sq\s*units?)"
    r"(?:\^\{?[23]\}?|²|³)?\s*$"
)
_FRAC_SHORT = re.compile(r"\\frac\s*(\d|\{[^{}]*\})\s*(\d|\{[^{}]*\})")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d+|[A-Za-z])")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize(answer: str) -> str:
    """A canonical spelling of `answer` (see module docstring); purely cosmetic rewrites."""
    s = answer.replace("\x00", "").strip()
    for old, new in _UNICODE.items():
        s = s.replace(old, new)
    s = re.sub(r"(\d),\\!\s*(?=\d{3}(?!\d))", r"\1", s)  # MATH's 10,\!080
    s = re.sub(r"(\d)\{,\}(?=\d{3}(?!\d))", r"\1", s)  # 1{,}000
    s = re.sub(r"(\d)\\[, ](?=\d{3}(?!\d))", r"\1", s)  # 1\,000
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", "", s)
    s = _SPACING.sub(" ", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = s.replace("\\varnothing", "\\emptyset").replace("**", "^").replace("\\infin ", "\\infty ")
    s = _unwrap_text(s)
    s = _UNIT_WORDS.sub("", s)  # trailing plain-word units: "18 dollars", "5 cm^2"
    s = re.sub(r"(?<=\S)\s+and\s+(?=\S)", ",", s)  # "3 and 4" is the list 3, 4
    s = _FRAC_SHORT.sub(lambda m: f"\\frac{{{m.group(1).strip('{}')}}}{{{m.group(2).strip('{}')}}}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = re.sub(r"(?i)\b(?:infinity|inf)\b", r"\\infty", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = s.rstrip(".").strip()
    if _THOUSANDS.fullmatch(s.lstrip("+-")):  # only a whole answer: in (12,102) the comma separates
        s = s.replace(",", "")
    s = re.sub(r"\s*([,()\[\]{}=+\-^_<>])\s*", r"\1", s)  # spaces around punctuation never matter
    return s


def _unwrap_text(s: str) -> str:
    """`\\text{…}`-like wrappers: drop them when they hold a unit after a value, else keep the content."""
    out = []
    i = 0
    for m in _WRAPPERS.finditer(s):
        if m.start() < i:
            continue  # nested in a wrapper already handled
        end = _close(s, m.end() - 1)
        if end is None:
            break
        content = s[m.end() : end]
        before = "".join(out) + s[i : m.start()]
        is_unit = re.fullmatch(r"\s*[A-Za-z][A-Za-z ]*\s*", content) and re.search(r"[\d}]\s*$", before)
        if is_unit and not re.fullmatch(r"\s*(?:and|or)\s*", content):
            out.append(s[i : m.start()])
            tail = re.match(r"\s*\^\s*\{?[23]\}?", s[end + 1 :])  # cm^2
            i = end + 1 + (tail.end() if tail else 0)
        else:
            out.append(s[i : m.start()] + content)
            i = end + 1
    out.append(s[i:])
    return "".join(out)


def _close(s: str, start: int) -> int | None:
    depth = 0
    for j in range(start, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return None


# ------------------------------------------------------------------------------------------------
# Cheap kinds: exact numbers, choices, words, numbers in a base.

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SIGNED = re.compile(rf"([+-]?)({_NUM})")
_SCI = re.compile(rf"([+-]?{_NUM})(?:[eE]|\\times10\^|\\cdot10\^|\*10\^)\{{?([+-]?\d{{1,4}})\}}?")
_FRAC = re.compile(rf"([+-]?)\\frac\{{([+-]?{_NUM})\}}\{{([+-]?{_NUM})\}}")
_SLASH = re.compile(rf"([+-]?{_NUM})/([+-]?{_NUM})")
_MIXED_TEX = re.compile(r"([+-]?)(\d+) ?\\frac\{(\d+)\}\{(\d+)\}")
_MIXED_PLAIN = re.compile(r"([+-]?)(\d+) (\d+)/(\d+)")


def rational(s: str) -> Fraction | None:
    """An exact `Fraction` when the normalized `s` is a plain number (module docstring), else None."""
    s = s.strip()
    if len(s) > 80:
        return None
    if m := _SIGNED.fullmatch(s):
        return Fraction(m.group(2)) * (-1 if m.group(1) == "-" else 1)
    if m := _SCI.fullmatch(s):
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
    if m := _FRAC.fullmatch(s):
        num, den = Fraction(m.group(2)), Fraction(m.group(3))
        return None if den == 0 else num / den * (-1 if m.group(1) == "-" else 1)
    if m := _SLASH.fullmatch(s):
        num, den = Fraction(m.group(1)), Fraction(m.group(2))
        return None if den == 0 else num / den
    if m := _MIXED_TEX.fullmatch(s) or _MIXED_PLAIN.fullmatch(s):
        whole, num, den = int(m.group(2)), int(m.group(3)), int(m.group(4))
        if den == 0 or num >= den:  # 2\frac{5}{3} is not how anyone writes a mixed number
            return None
        return (whole + Fraction(num, den)) * (-1 if m.group(1) == "-" else 1)
    return None


def choice(s: str) -> str | None:
    """The letter of a multiple-choice answer: `B`, `(B)`, `\\text{(B)}`, `(B) 12`, `B)`; else None.

    "B 12" is not a choice (it could be a product); "(B) 12" is choice B with its value.
    """
    s = s.strip()
    m = re.fullmatch(r"\(([A-E])\).*", s) or re.fullmatch(r"([A-E])(?:[.:)].*)?", s)
    return m.group(1) if m else None


def text_word(s: str) -> str | None:
    """A word answer (`Evelyn`, `\\text{east}`, `even`) lowercased, else None (one letter is a variable)."""
    s = s.strip().strip(".")
    if not re.fullmatch(r"[A-Za-z][A-Za-z' ]*[A-Za-z]", s) or not re.search(r"[A-Za-z]{3}", s):
        return None  # "p-q", "xy", "pi": expressions, not words
    functions = ("sin", "cos", "tan", "cot", "sec", "csc", "log", "exp", "sqrt")
    return None if s.lower().startswith(functions) else s.lower()


def based_number(s: str) -> tuple[str, str] | None:
    """(`digits`, `base`) for `204_5`, `4210_{5}`, `2516_8`; the digits compare as text."""
    m = re.fullmatch(r"([0-9A-Fa-f]+)_\{?(\d+)\}?", s.strip())
    return (m.group(1).upper(), m.group(2)) if m else None


# ------------------------------------------------------------------------------------------------
# Static guard: cheap refusals before sympy ever sees the text.

_FACTORIAL = re.compile(r"(\d+)\s*!")
_BIG_OPERATOR = re.compile(r"\\(?:sum|prod)_(?:\{[^{}]*\}|\S)\^(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}|\d+)")
_POWER = re.compile(r"(\d+(?:\.\d+)?)\s*\^\s*\{?\s*(\d+)")


def guard(s: str) -> str | None:
    """Why `s` must not go to sympy (too long, too deep, an enormous power or factorial), or None."""
    if len(s) > MAX_ANSWER_CHARS:
        return f"answer longer than {MAX_ANSWER_CHARS} characters"
    depth = deepest = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth -= 1
    if deepest > MAX_DEPTH:
        return f"nesting deeper than {MAX_DEPTH}"
    if s.count("^") > 40 or s.count("!") > 20:
        return "too many powers or factorials"
    if _exponent_depth(s) > 2:
        return "power tower (an exponent inside an exponent inside an exponent)"
    for m in _BIG_OPERATOR.finditer(s):
        if len(m.group(1)) > 4 or "^" in m.group(1):
            return f"sum or product up to {m.group(1)[:20]}"
    for m in _FACTORIAL.finditer(s):
        if len(m.group(1)) > 5 or int(m.group(1)) > 5000:
            return f"factorial of {m.group(1)[:20]}"
    for m in _POWER.finditer(s):
        base, exp = float(m.group(1)), m.group(2)
        if base > 1 and (len(exp) > 7 or int(exp) * math.log10(base) > MAX_DIGITS):
            return f"power {m.group(1)[:20]}^{exp[:20]} too large"
    return None


def _exponent_depth(s: str) -> int:
    """How deeply `^{…}` exponents nest: `a^{b^{c}}` is 2, `5^{(5^{(5^{5})})}` is 3."""
    stack: list[bool] = []  # one entry per open brace: is it an exponent's brace?
    deepest = 0
    for i, ch in enumerate(s):
        if ch == "{":
            stack.append(i > 0 and s[i - 1] == "^")
            deepest = max(deepest, sum(stack))
        elif ch == "}" and stack:
            stack.pop()
    return deepest


def has_relation(s: str) -> bool:
    return bool(re.search(r"=|<|>|\\(?:[lg]eq?|ne|in)(?![a-z])", s))


def split_assignment(s: str) -> tuple[str, str]:
    """(`x`, `5`) for `x=5` or `x\\in[1,2]` (one symbol on the left, no other relation); else ("", s)."""
    m = re.fullmatch(r"([A-Za-z](?:_\{?\w+\}?)?|\\[a-z]+)(?:=|\\in(?![a-z]))(.+)", s)
    if m and not has_relation(m.group(2)):
        return m.group(1), m.group(2)
    return "", s
