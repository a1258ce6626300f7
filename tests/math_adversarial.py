"""Adversarial inputs for the math reward: each must come back within the bound, never credited by accident.

Power towers (Math-Verify #65), `10**10**10`, factorial(10^8), 100k-character responses, 5,000-deep
nesting, malformed LaTeX, null bytes, huge sums and products. Each row is (response, gold, the set of
acceptable statuses); two rows hold a genuinely correct answer wrapped in junk.
"""

from __future__ import annotations

from answerkey.rewards.score import Status

C, W, N, U = Status.correct, Status.wrong, Status.no_answer, Status.unparseable

_TOWER = "\\boxed{\\dfrac{5^{(5^{(5^{(5^5)})}-4)}-5}{16}}"
ADVERSARIAL = [
    (_TOWER, "5", {U, W, Status.timeout}),  # Math-Verify #65
    ("\\boxed{10**10**10}", "1", {U, W, Status.timeout}),
    ("\\boxed{10^{10^{10}}}", "1", {U, W, Status.timeout}),
    ("\\boxed{2^{2^{2^{2^{2^{2}}}}}}", "1", {U, W, Status.timeout}),
    ("\\boxed{9^{9^{9}}}", "1", {U, W, Status.timeout}),
    ("\\boxed{(10^8)!}", "1", {U, W, Status.timeout}),
    ("\\boxed{100000000!}", "1", {U, W, Status.timeout}),
    ("\\boxed{\\frac{1}{(10^{8})!}}", "0", {U, W, Status.timeout}),
    ("\\boxed{123456789!!}", "1", {U, W, Status.timeout}),
    ("\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "1", {U, W, N, Status.timeout}),
    ("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "1", {U, W, N, Status.timeout}),
    ("\\boxed{" + "\\sqrt{" * 3000 + "2" + "}" * 3000 + "}", "1", {U, W, N, Status.timeout}),
    ("\\boxed{" + "\\frac{1}{" * 2000 + "2" + "}" * 2000 + "}", "1", {U, W, N, Status.timeout}),
    ("x" * 100_000, "1", {N}),
    ("\\boxed{" + "1+" * 50_000 + "1}", "1", {U, W, N, Status.timeout}),
    ("9" * 100_000, "1", {N}),
    ("\\boxed{" + "9" * 5000 + "}", "1", {U, W, N}),  # the box opens before the scanned tail
    ("\\boxed{\\log_{2^5}(\\log_{2^4}(\\log_{2^3}(\\log_{2^2}(2^{2^{2^{2^{16}}}}))))}", "1",
     {U, W, Status.timeout}),  # #63
    ("\\boxed{\\frac{1}{2}", "1", {N}),
    ("\\boxed{\\frac{1}{2}}}}}}", "\\frac12", {C, N, U, W}),  # stray closers after a complete box
    ("\\boxed{\\frac{}{}}", "1", {U, W}),
    ("\\boxed{\\left( 1, 2 \\right}", "(1,2)", {U, W}),
    ("\\boxed{\\begin{pmatrix} 1 & 2 \\end{bmatrix}}", "1", {U, W}),
    ("\\boxed{\\x00\x00\x00}", "1", {U, W, N}),
    ("\x00" * 1000 + "\\boxed{1\x002}", "12", {C, U, W}),
    ("\\boxed{\\int_0^{10^{100}} e^{x^2} dx}", "1", {U, W, Status.timeout}),
    ("\\boxed{\\sum_{n=1}^{10^{12}} n^{n}}", "1", {U, W, Status.timeout}),
    ("\\boxed{\\prod_{k=1}^{10^{9}} k}", "1", {U, W, Status.timeout}),
    ("\\boxed{" + "x^" * 200 + "x}", "1", {U, W, Status.timeout}),
    ("\\boxed{" + "a" * 600 + "}", "1", {U, W, Status.timeout}),
    ("\\boxed{\\\\\\\\\\\\\\\\}", "1", {U, W, N}),
    ("\\boxed{$$$$}", "1", {U, W, N}),
    ("\\boxed{\\begin{pmatrix}" + "1&" * 2000 + "1\\end{pmatrix}}", "1", {U, W, N, Status.timeout}),
    ("\\boxed{x^{x^{x^{x^{x^{x^{x}}}}}}}", "x", {U, W, Status.timeout}),
    ("\\boxed{\\sin(10^{10^{10}})}", "0", {U, W, Status.timeout}),
    ("\\boxed{e^{e^{e^{e^{e^{10}}}}}}", "1", {U, W, Status.timeout}),
    ("\\boxed{1" + "0" * 100 + "}", "1", {W}),
]

