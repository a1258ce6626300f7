"""Evaluation metrics over n samples per problem: pass@1, pass@k (unbiased), maj@k, and `answerkey eval`.

    answerkey eval runs/my-run/checkpoints/step_000100/model --env answerkey.envs.gsm8k:GSM8KEnv \\
        --kwargs '{"test_path": "data/gsm8k/test.jsonl"}' --n 8 --limit 200

pass@k is the unbiased estimator of Chen et al. 2021 (https://arxiv.org/abs/2107.03374, eq. 1):
with c correct among n samples, pass@k = 1 - C(n-c, k) / C(n, k), averaged over problems. maj@k
takes the first k samples of a problem, groups them by final answer (the env's `extract_answer` when
it has one, else the math reward's `final_answer`: its extraction and normalization, with plain
numbers as exact rationals so `0.5` and `\\frac{1}{2}` are one vote), and counts the problem
solved when the most common answer was scored correct (ties: the answer seen first; samples with
no answer do not vote). A sample counts as correct when its status is `correct`.
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    """`answerkey eval CKPT --env PATH [--kwargs JSON] [--n N] [--split test] [--limit L]` (one process,
    no Ray)."""
    from answerkey.envs import Env, load_env
    from answerkey.loop import prompts_for
    from answerkey.reward_workers import RewardWorkers
    from answerkey.rollout.engine import SamplingParams
    from answerkey.rollout.torch_engine import TorchEngine

    p = argparse.ArgumentParser(prog="answerkey eval",
                                description="pass@k and maj@k of a checkpoint on an env's split")
    p.add_argument("checkpoint",
                   help="Hugging Face checkpoint directory (e.g. runs/x/checkpoints/step_000100/model)")
    p.add_argument("--env", required=True, help="dotted path of the env, e.g. answerkey.envs.gsm8k:GSM8KEnv")
    p.add_argument("--kwargs", default="{}", help="JSON object of env constructor arguments")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=int, default=8, help="samples per problem")
    p.add_argument("--limit", type=int, default=0, help="first L problems only (0 = all)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--reward-timeout", type=float, default=30.0,
                   help="seconds per completion before its scorer is killed")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    kwargs = json.loads(args.kwargs)
    env = load_env(args.env, kwargs)
    if not isinstance(env, Env):
        raise TypeError(f"answerkey eval scores single-turn envs; {args.env} is multi-turn")
    problems = list(env.problems(args.split))[: args.limit or None]
    engine = TorchEngine.from_pretrained(args.checkpoint, seed=args.seed)
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    groups = engine.generate(prompts_for(engine.tokenizer, problems), args.n, sampling)
    with RewardWorkers(args.env, kwargs, timeout_s=args.reward_timeout) as workers:
        flat = workers.score([q for q in problems for _ in range(args.n)],
                             [c.text for g in groups for c in g])
    scores = [flat[i * args.n : (i + 1) * args.n] for i in range(len(problems))]
    texts = [[c.text for c in g] for g in groups]
    lengths = [[len(c.token_ids) for c in g] for g in groups]
    metrics = summarize(texts, scores, lengths, getattr(env, "extract_answer", None))
    print(json.dumps({"checkpoint": args.checkpoint, "env": args.env, "split": args.split,
                      "problems": len(problems), "n": args.n} | metrics, indent=2))
    return 0
