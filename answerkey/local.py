"""One GRPO step in one process, no Ray: collect scored groups with an engine, evaluate on held-out problems.

    groups = collect(engine, env, tokenizer, problems, sampling, group_size=8)   # P lists of G Trajectory
    metrics = learner.step(groups)
    evaluate(engine, env, tokenizer, env.problems("test"), sampling, n=8)        # {"eval/reward": ..., ...}

The Ray driver runs the same pieces in actors; this module is what the demo, the learning test and
the benchmarks use when the engine and learner share one model in one process (nothing to sync).
Single-turn envs are sampled as one batch and scored with `score_batch`; multi-turn envs run their
own `rollout` once per completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from answerkey import chat
from answerkey.envs.base import Env, MultiTurnEnv, Problem, Trajectory, score_batch
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
