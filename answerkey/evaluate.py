"""Evaluation metrics over n samples per problem: pass@1, pass@k (unbiased), maj@k, mean reward, statuses.

    metrics = summarize(texts, scores, lengths)      # (P, n) each; {"eval/pass@1": ..., "eval/maj@8": ...}
    answerkey eval runs/r1/checkpoints/step_000100/model --env answerkey.envs.gsm8k:GSM8KEnv --n 8 --limit 200

The RL loop's held-out evaluation (`answerkey/loop.py`, `Rollouts.evaluate`) reports these, and so does
`answerkey eval` (answerkey/cli.py), which runs that evaluation on a checkpoint in one process.

pass@k is the unbiased estimator of Chen et al. 2021 (https://arxiv.org/abs/2107.03374, eq. 1):
with c correct among n samples, pass@k = 1 - C(n-c, k) / C(n, k), averaged over problems. maj@k
takes the first k samples of a problem, groups them by final answer (the env's `extract_answer` when
it has one, else the math reward's `final_answer`: its extraction and normalization, with plain
numbers as exact rationals so `0.5` and `\\frac{1}{2}` are one vote), and counts the problem
solved when the most common answer was scored correct (ties: the answer seen first; samples with
no answer do not vote). A sample counts as correct when its status is `correct`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from math import comb

from answerkey.rewards import Score, Status, status_counts
from answerkey.rewards.math import final_answer


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(texts: Sequence[str], scores: Sequence[Score],
                     extract: Callable[[str], str | None]) -> bool:
    """Whether the most common extracted answer among these samples was scored correct."""
    votes: Counter[str] = Counter()
    correct: dict[str, bool] = {}
    for text, score in zip(texts, scores, strict=True):
        answer = extract(text)
        if answer is None:
            continue
        votes[answer] += 1
        correct.setdefault(answer, score.status == Status.correct)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in votes if votes[a] == top)  # Counter keeps first-seen order
    return correct[winner]


def summarize(texts: Sequence[Sequence[str]], scores: Sequence[Sequence[Score]],
              lengths: Sequence[Sequence[int]], extract: Callable[[str], str | None] | None = None,
              prefix: str = "eval") -> dict[str, float]:
    """Metrics of (P, n) sampled completions: mean reward, pass@1 / pass@k / maj@k, length, statuses."""
    extract = extract or final_answer
    n = len(scores[0])
    flat = [s for group in scores for s in group]
    ks = sorted({1, n} | {k for k in (2, 4, 8, 16) if k < n})
    out = {f"{prefix}/reward": sum(map(float, flat)) / len(flat),
           f"{prefix}/response_length": sum(map(sum, lengths)) / len(flat)}
    for k in ks:
        passed = sum(pass_at_k(n, sum(s.status == Status.correct for s in g), k) for g in scores)
        out[f"{prefix}/pass@{k}"] = passed / len(scores)
    majority = sum(majority_correct(t, s, extract) for t, s in zip(texts, scores, strict=True))
    out[f"{prefix}/maj@{n}"] = majority / len(scores)
    out |= {k.replace("reward/", f"{prefix}/"): v / len(flat) for k, v in status_counts(flat).items()}
    return out
