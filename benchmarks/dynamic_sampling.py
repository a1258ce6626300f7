"""DAPO's dynamic sampling against plain GRPO: the learning test's recipe, with and without refill rounds.

    python benchmarks/dynamic_sampling.py                      # 60 steps, refill rounds 0 and 2, seed 0
    python benchmarks/dynamic_sampling.py --steps 40 --rounds 0 1 3 --json out.json

The recipe of tests/test_learning.py: a ~0.12M-parameter policy warmed up on terse and worked answers
(`pretrain.bootstrap.tiny_policy`, the same seed for every side), then `examples/show_work_cpu.toml`'s GRPO
for `--steps` steps through the loop `answerkey rl` runs (`answerkey.local`), once per value of
`rollout.max_refill_rounds`. Reported per side: the held-out mean reward (4 samples x 500 problems) before
and after, the completions sampled in training (refills cost rollouts), the mean informative groups per
step (the batch the learner trained on, out of P = 32) and the steps that used every refill round. The sides
run one after another in this process on 1 thread (the model is overhead-bound); the comparison is in
learning per step and per completion, not in time.
"""

from __future__ import annotations

import argparse
import json

import torch

from answerkey import local
from answerkey.config import load_config
from answerkey.envs import load_env
from answerkey.pretrain.bootstrap import tiny_policy
from answerkey.pretrain.loop import torch_threads

EXAMPLE = "examples/show_work_cpu.toml"
WARMUP_STEPS = 2000  # as tests/test_learning.py
EVAL_SAMPLES = 4


def side(rounds: int, steps: int, seed: int) -> dict:
    cfg = load_config(EXAMPLE, [f"--run.steps={steps}", f"--run.seed={seed}", "--rollout.workers=1",
                                f"--rollout.max_refill_rounds={rounds}"])
    torch.manual_seed(seed)
    env = load_env(cfg.env.path, cfg.env.kwargs)
    model, tokenizer = tiny_policy(env, sft_steps=WARMUP_STEPS, seed=seed, terse_fraction=0.5)
    test = env.problems("test")
    loop = local.start(cfg, model, tokenizer)
    try:
        before = loop.evaluate(test, EVAL_SAMPLES)
        rows = []
        while loop.step < cfg.run.steps:
            rows.append(loop.train_step())
            print(f"  rounds {rounds}: step {loop.step} reward {rows[-1]['reward/mean']:.3f} "
                  f"informative {rows[-1]['rollout/informative_groups']:.0f}", flush=True)
        after = loop.evaluate(test, EVAL_SAMPLES)
    finally:
        loop.close()
    group = cfg.rollout.group_size
    return {"max_refill_rounds": rounds, "before": before["eval/reward"], "after": after["eval/reward"],
            "gain": after["eval/reward"] - before["eval/reward"],
            "completions": sum(r["rollout/groups_sampled"] for r in rows) * group,
            "informative_per_step": sum(r["rollout/informative_groups"] for r in rows) / len(rows),
            "steps_out_of_rounds": sum(r["rollout/rounds"] == rounds + 1 and rounds > 0 for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = []
    with torch_threads(1):
        for rounds in args.rounds:
            results.append(side(rounds, args.steps, args.seed))
    print(f"{'refill rounds':>13} {'reward before -> after':>24} {'gain':>7} {'completions':>12} "
          f"{'informative/step':>17} {'steps out of rounds':>20}")
    for r in results:
        print(f"{r['max_refill_rounds']:>13} {r['before']:>11.3f} -> {r['after']:<10.3f} {r['gain']:>+7.3f} "
              f"{r['completions']:>12.0f} {r['informative_per_step']:>17.1f} {r['steps_out_of_rounds']:>20}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
