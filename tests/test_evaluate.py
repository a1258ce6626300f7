"""pass@k against brute-force enumeration, maj@k by hand, and `answerkey eval` on a checkpoint."""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from answerkey import cli
from answerkey.evaluate import majority_correct, pass_at_k, summarize
from answerkey.rewards import Score, Status
from answerkey.rewards.math import final_answer

RIGHT, WRONG, NONE = Score(1.0, Status.correct), Score.failed(Status.wrong), Score.failed(Status.no_answer)


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in range(1, 7) for c in range(n + 1)
                                   for k in range(1, n + 1)])
def test_pass_at_k_is_the_fraction_of_k_subsets_with_a_correct_sample(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n=4, c=5, k=1"):
        pass_at_k(4, 5, 1)


@pytest.mark.parametrize("texts,scores,expected", [
    (["#### 3", "#### 3", "#### 4"], [RIGHT, RIGHT, WRONG], True),
    (["#### 4", "#### 3", "#### 4"], [WRONG, RIGHT, WRONG], False),  # the majority is wrong, one is right
    (["#### 4", "#### 3"], [WRONG, RIGHT], False),  # a tie goes to the answer seen first
    (["no idea", "no idea", "#### 3"], [NONE, NONE, RIGHT], True),  # samples without an answer do not vote
    (["no idea"], [NONE], False),
    (["#### 0.5", "\\boxed{\\frac{1}{2}}", "#### 2"], [RIGHT, RIGHT, WRONG], True),  # one answer, 2 spellings
])
def test_majority_vote(texts, scores, expected):
    assert majority_correct(texts, scores, final_answer) is expected


def test_summarize_reports_pass_at_1_and_k_and_maj_at_k():
    texts = [["#### 3", "#### 4", "#### 3", "#### 5"], ["#### 1", "#### 2", "#### 2", "#### 2"]]
    scores = [[RIGHT, WRONG, RIGHT, WRONG], [RIGHT, WRONG, WRONG, WRONG]]
    m = summarize(texts, scores, [[5, 5, 5, 5], [5, 5, 5, 5]])
    assert m["eval/pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    # problem 1: "3" wins; problem 2: "2" (wrong) wins
    assert m["eval/pass@4"] == 1.0 and m["eval/maj@4"] == 0.5
    assert m["eval/pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2)) / 2)
    assert m["eval/reward"] == pytest.approx(3 / 8) and m["eval/status/wrong"] == pytest.approx(5 / 8)


def test_answerkey_eval_reports_pass_and_maj_at_k_for_a_checkpoint(policy_dir, capsys):
    argv = ["eval", str(policy_dir), "--env", "answerkey.envs.synthetic:SyntheticEnv",
            "--kwargs", '{"difficulty": 2, "train_size": 50, "test_size": 12}', "--n", "4",
            "--max-new-tokens", "24"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("{"):])
    assert report["problems"] == 12 and report["n"] == 4
    assert {"eval/pass@1", "eval/pass@2", "eval/pass@4", "eval/maj@4", "eval/reward"} <= set(report)
    assert 0 <= report["eval/pass@1"] <= report["eval/pass@2"] <= report["eval/pass@4"] <= 1


def test_answerkey_eval_names_a_bad_n(policy_dir):
    argv = ["eval", str(policy_dir), "--env", "answerkey.envs.synthetic:SyntheticEnv", "--n", "0"]
    assert cli.main(argv) == 2
