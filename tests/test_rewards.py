import math

import pytest

from answerkey.rewards import Score, Status, exact, status_counts


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_score_rejects_non_finite(bad):
    with pytest.raises(ValueError, match="finite"):
        Score(bad, Status.correct)


def test_score_is_a_float_and_counts_every_status():
    scores = [Score(1.0, Status.correct), Score.failed(Status.timeout), Score.failed(Status.timeout),
              Score(0.0, Status.wrong)]
    assert [float(s) for s in scores] == [1.0, 0.0, 0.0, 0.0]
    counts = status_counts(scores)
    assert counts["reward/status/timeout"] == 2 and counts["reward/status/correct"] == 1
    assert set(counts) == {f"reward/status/{s.value}" for s in Status}  # stable keys, zeros included


@pytest.mark.parametrize(
    "response, gold, status",
    [
        ("2 + 3 = 5.\n#### 5", "5", Status.correct),
        ("#### 5\nthen more text", "5", Status.correct),
        ("#### 4\n#### 5", "5", Status.correct),  # the last marker counts
        ("\\boxed{5} ... #### 4", "5", Status.correct),  # a box beats ####
        ("\\boxed{\\frac{1}{2}}", "0.5", Status.correct),
        ("\\boxed{1/2}", "0.5", Status.correct),
        ("#### 0.333", "1/3", Status.wrong),  # decimals equal fractions only when exactly equal
        ("#### 1,234", "1234", Status.correct),
        ("#### 12,34", "1234", Status.unparseable),  # separators only in groups of three
        ("#### $18", "18", Status.correct),
        ("#### −7", "-7", Status.correct),  # unicode minus
        ("#### 6", "5", Status.wrong),
        ("I think it is 5", "5", Status.no_answer),  # no fallback to stray numbers
        ("\\boxed{5", "5", Status.no_answer),  # an unclosed box is no answer
        ("####   ", "5", Status.no_answer),
        ("#### five", "5", Status.unparseable),
        ("\\boxed{x^2}", "5", Status.unparseable),
        ("\\boxed{{5}}", "5", Status.unparseable),
    ],
)
def test_exact_checker(response, gold, status):
    result = exact.score(response, gold)
    assert result.status == status
    assert float(result) == (1.0 if status == Status.correct else 0.0)


def test_exact_checker_refuses_a_non_numeric_gold():
    with pytest.raises(ValueError, match="not a plain number"):
        exact.score("#### 5", "x + 1")


def test_last_boxed_matches_braces():
    assert exact.last_boxed("\\boxed{\\frac{1}{2}} and \\boxed{3}") == "3"
    assert exact.last_boxed("\\boxed{\\frac{1}{2}} and \\boxed{3") == "\\frac{1}{2}"
