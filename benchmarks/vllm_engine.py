"""vLLM (its CPU build) vs our torch engine vs Hugging Face `generate`: tokens/s side by side in one run.

    .venv-vllm/bin/python benchmarks/vllm_engine.py     # 28m preset, batch 64, 64 new tokens, fp32, 2 threads
    .venv-vllm/bin/python benchmarks/vllm_engine.py --model runs/demo/sft/model --json out.json

The protocol of benchmarks/engine.py (same prompts, completions forced to exactly `new_tokens` tokens,
temperature 1, no top-k/top-p, sides run in alternation, the median of runs 3..runs), with vLLM added as a
fourth side: `VLLMEngine` (rollout/vllm_engine.py, the adapter the rollout workers use) in this process, so
every side runs on the same `--threads` torch threads. The preset must have a head size vLLM's CPU attention
supports (28m: 64; the `tiny` preset's 16 has no kernel). `--model` benchmarks a saved checkpoint instead
(e.g. a real one, once the real-model issue lands), with its own tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import torch
import transformers
from engine import alternate, sides  # benchmarks/ is the script's folder, so on sys.path

from answerkey import chat
from answerkey.envs.synthetic import SyntheticEnv
from answerkey.model import build_model, num_parameters
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.pretrain.tokenizer import train_bpe
from answerkey.rollout.engine import SamplingParams


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="28m")
    p.add_argument("--model", help="a saved checkpoint directory instead of a fresh preset")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=8, help="timed runs per side; the median skips the first two")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = SyntheticEnv(difficulty=2, train_size=2000, test_size=max(200, args.batch))
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            path = args.model
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        else:
            path = tmp
            tokenizer = train_bpe([chat.render(c) for c in solution_conversations(env)], vocab_size=384)
            model = build_model(args.preset, len(tokenizer), chat.stop_token_ids(tokenizer),
                                pad_id=tokenizer.pad_token_id).eval()
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
        prompts = [chat.prompt_ids(tokenizer, q.messages()) for q in env.problems("test")[: args.batch]]
        return run(args, path, model, tokenizer, prompts)


def run(args, path: str, model, tokenizer, prompts: list[list[int]]) -> dict:
    import vllm

    from answerkey.rollout.vllm_engine import VLLMEngine

    sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, ignore_eos=True)
    calls = sides(model, tokenizer, prompts, args.new_tokens)
    engine = VLLMEngine(path, seed=0, threads=args.threads)
    calls["vLLM (CPU build)"] = lambda: sum(len(c.token_ids) for g in engine.generate(prompts, 1, sampling)
                                            for c in g)
    times, tokens = alternate(calls, args.runs)
    result = {"torch": torch.__version__, "transformers": transformers.__version__, "vllm": vllm.__version__,
              "model": args.model or args.preset, "parameters": num_parameters(model),
              "threads": args.threads, "batch": len(prompts), "new_tokens": args.new_tokens,
              "loadavg": os.getloadavg(), "sides": {}}
    for name in calls:
        assert tokens[name] == len(prompts) * args.new_tokens, f"{name} made {tokens[name]} tokens"
        median = statistics.median(times[name][2:] or times[name])
        result["sides"][name] = {"seconds": median, "tok_s": tokens[name] / median}
    base = result["sides"]["vLLM (CPU build)"]["tok_s"]
    print(f"torch {result['torch']}, transformers {result['transformers']}, vllm {result['vllm']}, "
          f"{args.threads} threads; {result['model']} ({result['parameters']:,} parameters), batch "
          f"{len(prompts)}, {args.new_tokens} new tokens, fp32, median of runs 3..{args.runs}; load "
          f"{', '.join(f'{x:.2f}' for x in result['loadavg'])}")
    for name, side in result["sides"].items():
        print(f"  {name:18} {side['tok_s']:9.0f} tok/s  {side['seconds'] * 1e3:8.0f} ms  "
              f"{side['tok_s'] / base:5.2f}x vLLM")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
