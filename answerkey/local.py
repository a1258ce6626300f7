"""One GRPO step in one process, no Ray: collect scored groups with an engine, evaluate on held-out problems.

    groups = collect(engine, env, tokenizer, problems, sampling, group_size=8)   # P lists of G Trajectory
    metrics = learner.step(groups)
    evaluate(engine, env, tokenizer, env.problems("test"), sampling, n=8)        # {"eval/reward": ..., ...}
    grpo(engine, learner, env, tokenizer, sampling, problems_per_step=32, group_size=8, steps=60)

The Ray driver runs the same pieces in actors; this module is for one process where the engine and
learner share one model (nothing to sync): the learning test's loop (`grpo`), the demo's and the
benchmarks' evaluation and collection.
Single-turn envs are sampled as one batch and scored with `score_batch`; multi-turn envs run their
own `rollout` once per completion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from answerkey import chat
from answerkey.envs.base import Env, MultiTurnEnv, Problem, Trajectory, score_batch
from answerkey.learner import grpo as grpo_math
from answerkey.rewards import status_counts
from answerkey.rollout.engine import RolloutEngine, SamplingParams


def prompts_for(tokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    """Token ids of each problem's conversation, ending with the assistant header."""
    return [chat.prompt_ids(tokenizer, p.messages()) for p in problems]


def collect(engine: RolloutEngine, env: Env | MultiTurnEnv, tokenizer, problems: Sequence[Problem],
            sampling: SamplingParams, group_size: int) -> list[list[Trajectory]]:
    """`group_size` scored trajectories for each problem, (P, G)."""
    if isinstance(env, MultiTurnEnv):
        def generate(ids):
            return engine.generate([list(ids)], 1, sampling)[0][0]
        return [[env.rollout(p, generate, tokenizer) for _ in range(group_size)] for p in problems]
    prompts = prompts_for(tokenizer, problems)
    groups = engine.generate(prompts, group_size, sampling)
    flat_problems = [p for p in problems for _ in range(group_size)]
    scores = score_batch(env, flat_problems, [c.text for g in groups for c in g])
    return [
        [Trajectory.from_completion(prompts[i], c, scores[i * group_size + j]) for j, c in enumerate(group)]
        for i, group in enumerate(groups)
    ]


def evaluate(engine: RolloutEngine, env: Env | MultiTurnEnv, tokenizer, problems: Sequence[Problem],
             sampling: SamplingParams, n: int) -> dict[str, float]:
    """Mean reward of `n` samples per problem (the policy's expected reward) and greedy accuracy."""
    sampled = [t for g in collect(engine, env, tokenizer, problems, sampling, n) for t in g]
    greedy = [g[0] for g in collect(engine, env, tokenizer, problems, replace(sampling, top_k=1), 1)]
    return {
        "eval/reward": sum(t.score.value for t in sampled) / len(sampled),
        "eval/greedy_reward": sum(t.score.value for t in greedy) / len(greedy),
        "eval/response_length": sum(len(t.completion_ids) for t in sampled) / len(sampled),
        "eval/truncated_fraction": sum(t.truncated for t in sampled) / len(sampled),
    } | {k.replace("reward/", "eval/"): v / len(sampled) for k, v in status_counts(t.score for t in sampled).items()}


def grpo(engine: RolloutEngine, learner, env: Env | MultiTurnEnv, tokenizer, sampling: SamplingParams,
         problems_per_step: int, group_size: int, steps: int, seed: int = 0, max_refills: int = 4,
         on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """`steps` GRPO steps on the env's training problems (P drawn at random each step); the metrics of each.

    Dynamic sampling: a batch whose groups all scored alike teaches nothing, so up to `max_refills`
    more batches are drawn until one group differs (`rollout/refills`).
    """
    train = env.problems("train")
    rng = torch.Generator().manual_seed(seed)
    history = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        groups, draws = [], 0
        while not any_informative(groups) and draws <= max_refills:
            problems = [train[i] for i in torch.randperm(len(train), generator=rng)[:problems_per_step]]
            groups += collect(engine, env, tokenizer, problems, sampling, group_size)
            draws += 1
        rollout_s = time.perf_counter() - start
        scores = [t.score for g in groups for t in g]
        metrics = learner.step(groups) | status_counts(scores) | {
            "reward/mean": sum(s.value for s in scores) / len(scores),
            "rollout/refills": draws - 1, "time/rollout_s": rollout_s, "time/step_s": time.perf_counter() - start}
        history.append(metrics)
        if on_step:
            on_step(step, metrics)
    return history


def any_informative(groups: list[list[Trajectory]]) -> bool:
    """True when at least one group's rewards differ (a non-zero advantage to learn from)."""
    return bool(groups) and not bool(grpo_math.uniform_groups(torch.tensor([[t.score.value for t in g] for g in groups])).all())
