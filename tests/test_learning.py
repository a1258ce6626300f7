"""GRPO learns: a tiny policy, warmed up on a mix of terse and worked answers, learns to show its work.

The whole stack for real, in one process: the synthetic world's multi-step kinds (three-operand sums
and differences, bare and as stories; the held-out split is by arithmetic, so no held-out computation
is ever trained on), a BPE tokenizer and a ~0.12M-parameter Llama built locally, an SFT warm-up with
`Learner.sft_step` on demonstrations that answer half the problems with their steps and half with the
bare answer, then `examples/show_work_cpu.toml`'s GRPO settings for 60 steps of the loop `answerkey rl`
runs (`answerkey.loop.Loop.train_step`), on plain objects in this process (`answerkey.local`): the torch
engine in a rollout worker, the sympy math reward in reward worker processes, the learner, and a
verified weight sync after every step.

The held-out reward is the mean reward of 4 samples on each of 500 held-out problems at the training
temperature (the quantity GRPO maximizes); the bar is a gain of >= 0.2. The terse answers the warm-up
imitates are mostly wrong and the worked ones mostly right, and RL removes the terse style: the
response length grows. benchmarks/RESULTS.md has the measured gain.
"""

import pytest
import torch

from answerkey import local
from answerkey.config import load_config
from answerkey.envs import load_env
from answerkey.pretrain.bootstrap import tiny_policy
from answerkey.pretrain.loop import torch_threads

EXAMPLE = "examples/show_work_cpu.toml"
WARMUP_STEPS = 2000  # SFT steps (batch 32, constant lr 3e-3): the answer format and the two-operand facts
EVAL_SAMPLES = 4
# the example's 40 (the demo's RL stage, from a stronger SFT policy) plus a margin for this weaker warm-up
RL_STEPS = 60
MIN_GAIN = 0.2


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("sampling", [[], ["--rollout.top_p=0.9"]], ids=["T1", "top-p-0.9"])
def test_grpo_teaches_a_tiny_policy_to_show_its_work(sampling):
    """At T = 1, and with nucleus sampling (the learner's logprobs under the same top-p: a sampled token
    outside its support is left out of the loss, never NaN)."""
    # a 0.12M-parameter model is overhead-bound: 1 thread is as fast, and far faster on a busy machine
    with torch_threads(1):
        learn_to_show_work(sampling)


def learn_to_show_work(sampling: list[str]):
    cfg = load_config(EXAMPLE, [f"--run.steps={RL_STEPS}", "--rollout.workers=1", *sampling])
    assert cfg.learner.weight_decay == 0
    torch.manual_seed(cfg.run.seed)
    env = load_env(cfg.env.path, cfg.env.kwargs)
    model, tokenizer = tiny_policy(env, sft_steps=WARMUP_STEPS, seed=cfg.run.seed, terse_fraction=0.5)
    test = env.problems("test")
    assert len(test) == 500
    loop = local.start(cfg, model, tokenizer)
    try:
        before = loop.evaluate(test, EVAL_SAMPLES)
        steps = []
        while loop.step < cfg.run.steps:
            steps.append(loop.train_step())
        after = loop.evaluate(test, EVAL_SAMPLES)
    finally:
        loop.close()

    for row in steps:  # every step learned from at least one group, with a non-zero gradient, and synced
        assert row["learner/groups_kept"] >= 1 and row["learner/grad_norm"] > 0, row
        assert row["sync/verified"] == 1.0 and row["learner/nonfinite_grad"] == 0.0, row
    report = (f"held-out reward {before['eval/reward']:.3f} -> {after['eval/reward']:.3f}, greedy accuracy "
              f"{before['eval/greedy_reward']:.3f} -> {after['eval/greedy_reward']:.3f}, response length "
              f"{before['eval/response_length']:.1f} -> {after['eval/response_length']:.1f} tokens")
    print(report)
    assert after["eval/reward"] - before["eval/reward"] >= MIN_GAIN, report
    # the mechanism: RL made the policy write its steps (worked answers are ~20 tokens, terse ones ~5)
    assert after["eval/response_length"] > before["eval/response_length"] + 3, report
