"""Scripted checks of the math reward over every gold answer of MATH-500 and GSM8K test.

Each gold is rewritten by `tests/math_forms.py` into equivalent responses (must score correct) and
wrong ones (must score wrong); each row's own worked solution must score correct against its gold.
All of it goes through the batched pool; most items are decided by the in-process fast path.
"""

from __future__ import annotations

from collections import Counter

import pytest

from answerkey.envs.jsonl import DATA, jsonl_lines
from answerkey.rewards import Status
from answerkey.rewards import math as math_reward
from tests.math_forms import equivalent_forms, wrong_forms


def _rows(name: str) -> list[dict]:
    return [row for _, row, _ in jsonl_lines(DATA / f"{name}.gz")]


def _golds() -> dict[str, list[str]]:
    math500 = [row["answer"] for row in _rows("math500/test.jsonl")]
    gsm8k = [row["answer"].rpartition("####")[2].strip() for row in _rows("gsm8k/test.jsonl")]
    return {"math500": math500, "gsm8k": gsm8k}


def _failures(pairs: list[tuple[str, str]], expected: Status) -> list[str]:
    scores = math_reward.score_batch(pairs)
    return [f"{gold!r} <- {response[-60:]!r}: {s.status.value} {s.detail[:80]}"
            for (response, gold), s in zip(pairs, scores, strict=True) if s.status != expected]


@pytest.mark.parametrize("dataset", ["math500", "gsm8k"])
def test_equivalent_forms_of_every_gold_score_correct(dataset):
    golds = _golds()[dataset]
    pairs = [(form, gold) for gold in golds for form in equivalent_forms(gold)]
    assert len(pairs) >= 5 * len(golds)
    failures = _failures(pairs, Status.correct)
    assert not failures, f"{len(failures)} of {len(pairs)}:\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("dataset", ["math500", "gsm8k"])
def test_wrong_forms_of_every_gold_score_wrong(dataset):
    golds = _golds()[dataset]
    pairs = [(form, gold) for gold in golds for form in wrong_forms(gold)]
    covered = Counter(gold for _, gold in pairs)
    assert len(covered) >= 0.85 * len(set(golds))  # relations, matrices, lists, \\pm: left to the table
    failures = _failures(pairs, Status.wrong)
    assert not failures, f"{len(failures)} of {len(pairs)}:\n" + "\n".join(failures[:20])


def test_every_worked_solution_scores_correct_against_its_gold():
    math500 = _rows("math500/test.jsonl")
    gsm8k = _rows("gsm8k/test.jsonl")
    pairs = [(row["solution"], row["answer"]) for row in math500]
    pairs += [(row["answer"], row["answer"].rpartition("####")[2].strip()) for row in gsm8k]
    failures = _failures(pairs, Status.correct)
    assert not failures, f"{len(failures)} of {len(pairs)}:\n" + "\n".join(failures[:20])
