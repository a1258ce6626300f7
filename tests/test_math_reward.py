"""The math reward: the hand-written table (every rule, positives and negatives, Math-Verify's reported
wrong verdicts), adversarial inputs answered within the bound, and the same verdicts from 4 threads
as from the main thread. The pool's kill, recovery and memory limit: tests/test_deadline_pool.py."""

from __future__ import annotations

import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from answerkey.rewards import Status
from answerkey.rewards import math as math_reward
from answerkey.rewards.math.extract import extract
from answerkey.rewards.math.parse import normalize, rational
from tests.math_adversarial import ADVERSARIAL
from tests.math_table import MATH_VERIFY_ROWS, TABLE

BOUND_S = 5.0


@pytest.fixture(scope="module")
def table_verdicts():
    """Every table row scored once, in one batch through the shared pool (the rows' tests read it)."""
    return math_reward.score_batch([(response, gold) for response, gold, _ in TABLE], timeout_s=BOUND_S)


def test_the_table_is_large_and_covers_both_verdicts():
    statuses = [status for _, _, status in TABLE]
    assert len(TABLE) >= 300 and len(ADVERSARIAL) >= 30
    assert statuses.count(Status.correct) >= 100 and statuses.count(Status.wrong) >= 100
    assert len(MATH_VERIFY_ROWS) >= 15


@pytest.mark.parametrize("row", range(len(TABLE)), ids=lambda i: f"row{i}")
def test_table_row(table_verdicts, row):
    response, gold, expected = TABLE[row]
    result = table_verdicts[row]
    assert result.status == expected, (f"{response[-80:]!r} vs gold {gold!r}: "
                                       f"{result.status.value} ({result.detail})")
    assert float(result) == (1.0 if expected == Status.correct else 0.0)


def test_adversarial_inputs_come_back_within_the_bound_and_never_correct_by_accident():
    results = math_reward.score_batch([(r, g) for r, g, _ in ADVERSARIAL], timeout_s=BOUND_S)
    for (response, _gold, allowed), result in zip(ADVERSARIAL, results, strict=True):
        assert result.status in allowed, f"{response[:60]!r}: {result.status.value} ({result.detail})"
        assert result.status != Status.error, result.detail


def test_single_score_and_batch_agree():
    rows = TABLE[::25]
    batch = math_reward.score_batch([(r, g) for r, g, _ in rows])
    assert [math_reward.score(r, g).status for r, g, _ in rows] == [s.status for s in batch]


def test_scoring_installs_no_signal_handler():
    before = signal.getsignal(signal.SIGALRM)
    math_reward.score("\\boxed{\\sqrt{8}}", "2\\sqrt2")
    assert signal.getsignal(signal.SIGALRM) is before


def test_four_threads_get_the_main_threads_verdicts(table_verdicts):
    rows = TABLE[::6]
    expected = [table_verdicts[i].status for i in range(0, len(TABLE), 6)]

    def run(offset: int) -> list[Status]:
        order = rows[offset:] + rows[:offset]  # each thread walks the rows from a different start
        got = [math_reward.score(r, g).status for r, g, _ in order]
        return got[len(rows) - offset :] + got[: len(rows) - offset]

    with ThreadPoolExecutor(max_workers=4) as executor:
        per_thread = list(executor.map(run, [0, 7, 19, 31]))  # the same rows, started at different points
    assert threading.active_count() >= 1
    for statuses in per_thread:
        assert statuses == expected


def test_asyncio_executor_calls_get_the_same_verdicts(table_verdicts):
    rows = list(range(0, len(TABLE), 10))

    async def all_rows():
        return await asyncio.gather(*(asyncio.to_thread(math_reward.score, *TABLE[i][:2]) for i in rows))

    assert [s.status for s in asyncio.run(all_rows())] == [table_verdicts[i].status for i in rows]


def test_a_checker_with_its_own_pool_scores_and_closes():
    checker = math_reward.MathChecker(workers=1, timeout_s=5.0)
    try:
        scores = checker.score_batch([("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"), ("#### 7", "7"),
                                      ("\\boxed{x+1}", "x")])
        assert [s.status for s in scores] == [Status.correct, Status.correct, Status.wrong]
    finally:
        checker.close()


def test_extraction_reports_why_there_is_no_answer():
    assert extract("\\boxed{4").reason == "unclosed \\boxed"
    assert extract("no marker here, 42").reason == "no final-answer marker"
    assert extract("\\boxed{3 or 4}").reason == "hedged answer"
    assert extract("Answer: **12**").answer == "12"


@pytest.mark.parametrize(
    "text, value",
    [("1,234", 1234), ("1{,}234", 1234), ("-0.5", -0.5), ("\\frac{3}{4}", 0.75), ("2\\frac{1}{4}", 2.25),
     ("2 1/4", 2.25), ("1.5e3", 1500), ("\\$1,000.50", 1000.5), ("50\\%", 50), ("3/4", 0.75)],
)
def test_normalize_then_rational(text, value):
    assert rational(normalize(text)) == pytest.approx(value)


def test_bad_input_types_name_the_item():
    with pytest.raises(TypeError, match="item 1"):
        math_reward.score_batch([("\\boxed{1}", "1"), (None, "1")])
