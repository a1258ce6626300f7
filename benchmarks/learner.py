"""Learner forward + backward throughput on CPU as a share of the measured matmul peak (MFU), side by side.

    python benchmarks/learner.py                      # 28m preset, fp32, one GRPO batch of 8 x 8 x 64 tokens
    python benchmarks/learner.py --precision bf16 --runs 8 --json out.json

One GRPO batch as the benchmarks' step makes it: P = 8 problems of the synthetic world (their real chat
prompts), G = 8 completions each of exactly 64 tokens (random ids, fixed seed), rewards in [0, 1]. Two
sides alternate, `runs` times each, on identical copies of the freshly initialized preset:
`Learner.backward` as shipped (the lean Llama forward with each distinct prompt run once,
`answerkey/model/completion.py`, oneDNN GEMMs) and the same Learner with `lean=False` (the Hugging Face
model's forward on every full prompt + completion sequence, as TRL and most trainers run it). `backward`
is the whole micro-batched forward + loss + backward, no optimizer step (timed apart, once).

Reported, on the median of runs 3..N: seconds, and throughput as a share of the peak
(`benchmarks/floor.py`, measured in this run in the same precision) counted two ways: `mfu` = 6N FLOPs
per token the forward actually processed (real tokens: distinct prompts once for ours, every sequence's
prompt for HF's) and `mfu_trained` = 6N per trained (completion) token, the work the step needs — the
second is what the GRPO floor counts, and it rewards not recomputing prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import torch
from floor import matmul_peak  # benchmarks/ is the script's folder, so on sys.path

from answerkey import chat
from answerkey.config import LearnerConfig
from answerkey.envs.base import Trajectory
from answerkey.envs.synthetic import SyntheticEnv
from answerkey.learner.learner import Learner
from answerkey.model import build_model, num_parameters
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.pretrain.tokenizer import train_bpe
from answerkey.rewards.score import Score, Status
from answerkey.rollout.engine import SamplingParams

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def grpo_groups(tokenizer, env, P: int, G: int, T: int, seed: int = 0) -> list[list[Trajectory]]:
    rng = random.Random(seed)
    groups = []
    for problem in env.problems("train")[:P]:
        prompt = chat.prompt_ids(tokenizer, problem.messages())
        groups.append([Trajectory(prompt, [rng.randrange(8, len(tokenizer)) for _ in range(T)], [1] * T,
                                  [-6.0] * T,
                                  Score(rng.random(), Status.partial), "length") for _ in range(G)])
    return groups


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="28m")
    p.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=6, help="timed runs per side; the median skips the first two")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = SyntheticEnv(difficulty=2, train_size=2000, test_size=200)
    tokenizer = train_bpe([chat.render(c) for c in solution_conversations(env)], vocab_size=384)
    groups = grpo_groups(tokenizer, env, args.prompts, args.group, args.new_tokens)
    cfg = LearnerConfig(lr=1e-5, drop_uniform_groups=False, precision=args.precision)
    sampling = SamplingParams(max_new_tokens=args.new_tokens)
    sides = {}
    for name, lean in (("ours", True), ("HF forward", False)):
        model = build_model(args.preset, len(tokenizer), chat.stop_token_ids(tokenizer),
                            pad_id=tokenizer.pad_token_id)
        sides[name] = Learner(model, cfg, sampling, total_steps=10, lean=lean)
    n = num_parameters(model)
    batch = sides["ours"].prepare(groups)
    prompts = {tuple(t.prompt_ids) for g in groups for t in g}
    tokens = {"ours": sum(map(len, prompts)) + sum(len(t.completion_ids) for g in groups for t in g),
              "HF forward": sum(len(t.prompt_ids) + len(t.completion_ids) for g in groups for t in g)}
    trained = batch.norm.tokens
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.runs):
        for name, learner in sides.items():  # alternate, so load changes hit both alike
            learner.optimizer.zero_grad(set_to_none=True)
            start = time.perf_counter()
            learner.backward(batch)
            times[name].append(time.perf_counter() - start)
    start = time.perf_counter()
    sides["ours"].optimizer_step()
    optimizer_s = time.perf_counter() - start
    peak, shape, by_library = matmul_peak(model, DTYPES[args.precision])
    result = {"preset": args.preset, "parameters": n, "precision": args.precision, "threads": args.threads,
              "P": args.prompts, "G": args.group, "new_tokens": args.new_tokens, "trained_tokens": trained,
              "peak_flops": peak, "peak_shape": shape, "peak_by_library": by_library,
              "optimizer_step_s": optimizer_s, "loadavg": os.getloadavg(), "sides": {}}
    for name in sides:
        med = statistics.median(times[name][2:] or times[name])
        result["sides"][name] = {"seconds": med, "tokens": tokens[name],
                                 "mfu": 6 * n * tokens[name] / med / peak,
                                 "mfu_trained": 6 * n * trained / med / peak, "runs_s": times[name]}
    result["hf_over_ours"] = result["sides"]["HF forward"]["seconds"] / result["sides"]["ours"]["seconds"]
    print(f"{args.preset} ({n:,} parameters), {args.precision}, {args.threads} threads, "
          f"P={args.prompts} x G={args.group} x "
          f"{args.new_tokens} tokens ({trained} trained), median of runs 3..{args.runs}; load "
          f"{', '.join(f'{x:.2f}' for x in result['loadavg'])}\n"
          f"{args.precision} matmul peak {peak / 1e9:.0f} GFLOP/s at "
          f"{shape} ({', '.join(f'{k} {v / 1e9:.0f}' for k, v in by_library.items())})")
    for name, side in result["sides"].items():
        print(f"  {name:10} fwd+bwd {side['seconds']:.2f} s over {side['tokens']} tokens: "
              f"{side['mfu']:.0%} of peak ({side['mfu_trained']:.0%} counting trained tokens only)")
    print(f"  HF forward / ours: {result['hf_over_ours']:.2f}x; optimizer step {optimizer_s:.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
