"""Symbolic equivalence of two normalized answer strings with sympy (the slow, killable part).

    >>> equal_latex("\\\\frac{\\\\sqrt{8}}{2}", "\\\\sqrt{2}")
    True
    >>> equal_latex("\\\\frac{1}{2^{99}}", "\\\\frac{1}{2^{98}}")      # Math-Verify #14 says True
    False
    >>> equal_latex("(2,\\\\infty)", "x>2"), equal_latex("2x+4y=6", "x+2y=3")
    (True, True)

Parsing is latex2sympy2_extended (the parser Math-Verify uses): after `parse.normalize` it reads
every MATH-500 gold, more of them and faster than sympy's own `parse_latex` (lark backend), and
sympy's ANTLR backend cannot load next to the ANTLR 4.13 runtime latex2sympy2_extended needs. We
call it with its own normalization off (ours ran already) and symbols kept case-sensitive.

Comparison is exact first: values that evaluate to rationals compare as rationals, with the free
symbols set to `len(POINTS)` fixed rational points (polynomial identity testing, Schwartz–Zippel
style), so polynomials and rational functions are compared with no tolerance at all. Values that
stay irrational (radicals, π, trig/log, complex numbers with `i` as the imaginary unit on both sides)
are equal when they agree to `TOL` (1e-60) relative error at `PREC` (80) significant digits. There is
no rounding, no absolute tolerance and no `chop`: `1/2^99 != 1/2^98`, `0.142857 != 1/7`; only
constructed inputs differing by less than 1e-60 relatively would pass as equal. Sets are
order-free, intervals compare brackets and endpoints, matrices shape and entries; a univariate
inequality equals its solution set; equations are equal when one side-difference is a nonzero
constant multiple of the other; `x = 5` equals `5`. Callers must run this under a hard wall-clock
bound (`rewards/deadline_pool.py`): sympy can still be slow on inputs the static guards let
through, and `guard_tree` only bounds what it can see. Only the pool's workers import this module
(`check._leaf` imports it where it needs sympy), so the caller's process never loads sympy.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import sympy
from latex2sympy2_extended import latex2sympy
from latex2sympy2_extended.latex2sympy2 import ConversionConfig
from latex2sympy2_extended.math_normalization import NormalizationConfig
from sympy.core.relational import Relational

from answerkey.rewards.math.parse import MAX_DIGITS

PREC = 80  # significant digits for numeric comparison
TOL = sympy.Float("1e-60", PREC)  # relative; far below any real answer's difference, far above noise
POINTS = (sympy.Rational(7316, 10000), sympy.Rational(-12389, 10000), sympy.Rational(20517, 10000),
          sympy.Rational(4183, 10000))  # values for free symbols: exact rationals, no special angles
MAX_NODES = 3000  # expression-tree size cap

_NORMALIZE_OFF = NormalizationConfig(basic_latex=False, units=False, malformed_operators=False, nits=False,
                                     boxed="none", equations=False)
_CONVERT = ConversionConfig(interpret_as_mixed_fractions=True, interpret_simple_eq_as_assignment=False,
                            interpret_contains_as_eq=True, lowercase_symbols=False)
_DECIMAL = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")


class Refused(ValueError):
    """The expression is too large to evaluate safely (a static guard, not a timeout)."""


@lru_cache(maxsize=4096)
def parse(latex: str) -> sympy.Basic:
    """The sympy object for a normalized LaTeX answer (unevaluated, guarded, `i` as the imaginary unit).

    Decimals become exact fractions first, so `0.142857` is 142857/10^6 and never `1/7`.
    """
    text = _DECIMAL.sub(lambda m: f"{{\\frac{{{m.group(1)}{m.group(2)}}}{{1{'0' * len(m.group(2))}}}}}",
                        latex)
    expr = latex2sympy(text, normalization_config=_NORMALIZE_OFF, conversion_config=_CONVERT)
    if not isinstance(expr, sympy.Basic):
        expr = sympy.sympify(expr)
    guard_tree(expr)
    return expr.xreplace({sympy.Symbol("i"): sympy.I})


def guard_tree(expr: sympy.Basic) -> None:
    """Raise `Refused` when evaluating `expr` could build an enormous number (power towers, n!)."""
    for nodes, _ in enumerate(sympy.preorder_traversal(expr)):
        if nodes >= MAX_NODES:
            raise Refused(f"expression has more than {MAX_NODES} nodes")
    _digits(expr)


def _digits(expr: sympy.Basic) -> float:
    """An upper bound on log10 |value| of a numeric subtree (0 for symbols); `Refused` past MAX_DIGITS."""
    if expr.is_Integer or expr.is_Rational:
        return math.log10(max(abs(expr.p), abs(expr.q), 1))
    if isinstance(expr, sympy.Pow):
        base, exp = _digits(expr.base), _digits(expr.exp)
        if expr.base in (0, 1, -1):
            return 0.0
        if exp > 6:
            raise Refused("exponent above 10^6")
        try:
            size = abs(float(sympy.N(expr.exp, 15))) * max(base, 1.0) if expr.exp.is_number else exp
        except (OverflowError, TypeError, ValueError):
            raise Refused("exponent cannot be bounded") from None
        if size > MAX_DIGITS:
            raise Refused(f"power with about 10^{size:.0f}")
        return size
    if isinstance(expr, sympy.factorial | sympy.factorial2 | sympy.gamma | sympy.binomial):
        arg = _digits(expr.args[0])
        if arg > 4:
            raise Refused("factorial of a number above 10^4")
        return 10**arg * arg + 1
    children = [_digits(a) for a in expr.args if isinstance(a, sympy.Basic)]
    if isinstance(expr, sympy.Mul):
        return sum(children)
    return max(children, default=0.0) + 1


_WARM_UP_PAIRS = (
    ("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}"), ("x^2+2x+1", "(x+1)^2"), ("(2,\\infty)", "x>2"),
    ("2x+4y=6", "x+2y=3"), ("\\{1,2\\}", "1\\pm 1"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "(1,2)"),
    ("\\sin^2 x+\\cos^2 x", "1"), ("\\log_2 8", "3"), ("2+3i", "e^{i\\pi}"),
    ("(-\\infty,2)\\cup(3,\\infty)", "[0,1]"), ("\\dfrac{3\\pi}{4}", "5!"),
    ("-\\frac{24}{25}", "\\tan^{-1}(1)"), ("a_1 b^{2}", "|x|"), ("\\binom{5}{2}", "\\sqrt[3]{27}"),
)


def warm_up() -> None:
    """Run a few representative comparisons so the ANTLR parser's caches are built before real items.

    The parser is slow the first time it sees each construct; a pool worker calls this once at start
    (off every item's clock), so the first items after a start or a kill are not slow.
    """
    for gold, answer in _WARM_UP_PAIRS:
        try:
            equal_latex(gold, answer)
        except Exception:  # noqa: BLE001, S112 - warming only; a failure here is harmless
            continue


# ------------------------------------------------------------------------------------------------
# Equivalence of two parsed objects.


def equal_latex(gold: str, answer: str) -> bool:
    return equivalent(parse(gold), parse(answer))


def equivalent(g: sympy.Basic, a: sympy.Basic) -> bool:
    """Whether answer `a` states what gold `g` states (see module docstring)."""
    if g == a:
        return True
    g, a = _assignment_value(g, a), _assignment_value(a, g)
    if isinstance(g, sympy.MatrixBase) or isinstance(a, sympy.MatrixBase):
        return _same_matrix(g, a)
    if isinstance(g, sympy.Eq) and isinstance(a, sympy.Eq):
        return _same_equation(g, a)
    if _is_set_like(g) or _is_set_like(a):
        return _same_set(g, a)
    if isinstance(g, sympy.Tuple) or isinstance(a, sympy.Tuple):
        return (isinstance(g, sympy.Tuple) and isinstance(a, sympy.Tuple) and len(g) == len(a)
                and all(equivalent(x, y) for x, y in zip(g, a, strict=True)))
    if isinstance(g, Relational | sympy.Eq) or isinstance(a, Relational | sympy.Eq):
        return False  # a relation never equals a plain value
    if not (isinstance(g, sympy.Expr) and isinstance(a, sympy.Expr)):
        return False
    return same_value(g, a)


def _assignment_value(x: sympy.Basic, other: sympy.Basic) -> sympy.Basic:
    """`x = 5` → `5` when the other side is not itself an equation (a single-variable assignment)."""
    if isinstance(x, sympy.Eq) and isinstance(x.lhs, sympy.Symbol) and not isinstance(other, sympy.Eq):
        return x.rhs
    return x


def _same_matrix(g: sympy.Basic, a: sympy.Basic) -> bool:
    g, a = _as_matrix(g), _as_matrix(a)
    if g is None or a is None or g.shape != a.shape:
        return False
    return all(equivalent(x, y) for x, y in zip(g, a, strict=True))


def _as_matrix(x: sympy.Basic) -> sympy.MatrixBase | None:
    if isinstance(x, sympy.MatrixBase):
        return x
    if isinstance(x, sympy.Tuple):  # (1, 2, 3) is accepted for a column vector
        return sympy.Matrix(list(x))
    return None


def _is_set_like(x: sympy.Basic) -> bool:
    return isinstance(x, sympy.Set | sympy.And | sympy.Or) or (
        isinstance(x, Relational) and not isinstance(x, sympy.Eq | sympy.Ne)
    )


def _as_set(x: sympy.Basic) -> sympy.Basic:
    """Inequalities (`x > 2`, `2 < x \\le 5`) become their real solution set; sets stay."""
    if isinstance(x, sympy.Set):
        return x
    if isinstance(x, Relational | sympy.And | sympy.Or) and len(x.free_symbols) == 1:
        return x.as_set()
    return x


def _same_set(g: sympy.Basic, a: sympy.Basic) -> bool:
    g, a = _as_set(g), _as_set(a)
    if isinstance(g, sympy.FiniteSet) and not isinstance(a, sympy.Set) and len(g) == 1:
        return equivalent(next(iter(g)), a)  # {5} vs 5
    if isinstance(a, sympy.FiniteSet) and not isinstance(g, sympy.Set) and len(a) == 1:
        return equivalent(g, next(iter(a)))
    if isinstance(g, sympy.FiniteSet) and isinstance(a, sympy.FiniteSet):
        return _match_unordered(list(g), list(a))
    gi, ai = _intervals(g), _intervals(a)
    if gi is None or ai is None or len(gi) != len(ai):
        return g == a
    return _match_unordered(gi, ai, _same_interval)


def _intervals(x: sympy.Basic) -> list[sympy.Interval] | None:
    if isinstance(x, sympy.Interval):
        return [x]
    if isinstance(x, sympy.Union) and all(isinstance(p, sympy.Interval) for p in x.args):
        return list(x.args)
    return None


def _same_interval(g: sympy.Interval, a: sympy.Interval) -> bool:
    return (g.left_open == a.left_open and g.right_open == a.right_open
            and equivalent(g.start, a.start) and equivalent(g.end, a.end))


def _match_unordered(golds: list, answers: list, same=None) -> bool:
    """Every gold element matched by a distinct answer element (greedy; elements are few)."""
    same = same or equivalent
    if len(golds) != len(answers):
        return False
    left = list(answers)
    for g in golds:
        hit = next((k for k, a in enumerate(left) if same(g, a)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def _same_equation(g: sympy.Eq, a: sympy.Eq) -> bool:
    """`2x + 4y = 6` ≡ `x + 2y = 3`: the side differences are nonzero constant multiples of each other."""
    if isinstance(g.lhs, sympy.Symbol) and g.lhs == a.lhs:
        return equivalent(g.rhs, a.rhs)
    dg, da = g.lhs - g.rhs, a.lhs - a.rhs
    if not (dg.free_symbols or da.free_symbols):
        return False
    ratios = [_evaluate(dg / da, subs) for subs in _assignments(dg.free_symbols | da.free_symbols)]
    ratios = [r for r in ratios if r is not None]
    return bool(ratios) and ratios[0] != 0 and all(_close(r, ratios[0]) for r in ratios)


# ------------------------------------------------------------------------------------------------
# Values: exact when possible, else high-precision evaluation at fixed points.


def same_value(g: sympy.Expr, a: sympy.Expr) -> bool:
    symbols = g.free_symbols | a.free_symbols
    if not symbols:
        gv, av = g.doit(), a.doit()
        if gv.is_Rational and av.is_Rational:
            return gv == av
        if not (gv.is_finite and av.is_finite):
            return gv == av
        return _numerically_equal(gv, av, {})
    checked = 0
    for subs in _assignments(symbols):
        x, y = _evaluate(g, subs), _evaluate(a, subs)
        if x is None or y is None:
            continue
        if not _close(x, y):
            return False
        checked += 1
    if checked:
        return True
    return sympy.simplify(g - a) == 0  # nowhere finite at our points: ask sympy


def _assignments(symbols: set) -> list[dict]:
    ordered = sorted(symbols, key=str)
    return [{s: POINTS[(k + j) % len(POINTS)] for j, s in enumerate(ordered)} for k in range(len(POINTS))]


def _evaluate(expr: sympy.Expr, subs: dict) -> sympy.Expr | None:
    """`expr` at `subs`: an exact Rational when it is one, else PREC digits; None when not a finite number."""
    try:
        exact = expr.subs(subs).doit()
        if exact.is_Rational:
            return exact
        value = sympy.N(exact, PREC)
    except (TypeError, ValueError, ZeroDivisionError, ArithmeticError):
        return None
    if not value.is_number or value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo) or value.free_symbols:
        return None
    return value


def _numerically_equal(x: sympy.Expr, y: sympy.Expr, subs: dict) -> bool:
    vx, vy = _evaluate(x, subs), _evaluate(y, subs)
    if vx is None or vy is None:
        return sympy.simplify(x - y) == 0
    if vx == 0 or vy == 0:  # a relative test cannot judge a zero: decide exactly
        return sympy.simplify(x - y) == 0
    return _close(vx, vy)


def _close(x: sympy.Expr, y: sympy.Expr) -> bool:
    if x.is_Rational and y.is_Rational:
        return x == y
    scale = max(abs(x), abs(y))
    if scale == 0:
        return True
    return bool(abs(x - y) <= TOL * scale)
