"""Rollout engine tokens/s on CPU against Hugging Face `generate`, side by side, with the compute floor.

    python benchmarks/engine.py              # 1.4m and 28m presets, batch 64, 64 new tokens, fp32, 2 threads
    python benchmarks/engine.py --presets 1.4m --runs 4 --json out.json

Protocol: the same freshly initialized Llama preset and BPE tokenizer, the same 64 left-padded
prompts (held-out synthetic problems), completions forced to exactly `new_tokens` tokens on every side
(ours: `ignore_eos`; HF: `min_new_tokens`), temperature 1, no top-k/top-p. Three sides run in
alternation, `runs` times each: ours (the lean Llama forward, `answerkey/model/decode.py`), ours with
the Hugging Face forward (`TorchEngine(lean=False)`: same loop and static cache, HF modules), and
`model.generate` with its default dynamic cache (the peer's exact call is printed). Reported: the
median of runs 3..runs (the first two warm up), tokens/s (new tokens, prefill included), ours / HF,
and each side as a multiple of the compute floor: 2 N FLOPs per generated token (N = parameters, the
tied embedding counted once as the LM head) at the machine's fp32 matmul peak, measured in the same run
(`benchmarks/floor.py`: the best of square GEMMs and the preset's own layer shapes). A multiple of 1.0
would be every FLOP at peak. The load average is printed with each preset's result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import transformers
from floor import matmul_peak  # benchmarks/ is the script's folder, so on sys.path
from gpu_engine import left_padded

from answerkey import chat
from answerkey.envs.synthetic import SyntheticEnv
from answerkey.model import build_model, num_parameters
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.pretrain.tokenizer import train_bpe
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine


def sides(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> dict[str, Callable[[], int]]:
    """name -> a call that generates `new_tokens` for every prompt and returns how many tokens it made."""
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True)
    lean, plain = TorchEngine(model, tokenizer, seed=0), TorchEngine(model, tokenizer, seed=0, lean=False)
    assert lean.decoder is not None, "the preset should take the lean Llama path"
    ids, mask = left_padded(prompts, tokenizer.pad_token_id, "cpu")

    def engine(e: TorchEngine) -> Callable[[], int]:
        return lambda: sum(len(c.token_ids) for g in e.generate(prompts, 1, sampling) for c in g)

    def hf() -> int:
        out = model.generate(**HF_CALL(ids, mask, new_tokens, tokenizer.pad_token_id))
        return int(out[:, ids.shape[1]:].numel())

    return {"ours": engine(lean), "ours (HF forward)": engine(plain), "HF generate": hf}


def HF_CALL(ids, mask, new_tokens: int, pad_id: int) -> dict:  # noqa: N802 - printed as the peer's config
    return dict(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id)


def alternate(calls: dict[str, Callable[[], int]],
              runs: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each side `runs` times, in alternation so load changes hit every side alike: (seconds per run, tokens
    of the last run) per side."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    tokens = {}
    with torch.inference_mode():
        for _ in range(runs):
            for name, call in calls.items():
                start = time.perf_counter()
                tokens[name] = call()
                times[name].append(time.perf_counter() - start)
    return times, tokens


def bench(preset: str, tokenizer, prompts, new_tokens: int, runs: int) -> dict:
    model = build_model(preset, len(tokenizer), chat.stop_token_ids(tokenizer),
                        pad_id=tokenizer.pad_token_id).eval()
    peak, shape, by_library = matmul_peak(model)
    calls = sides(model, tokenizer, prompts, new_tokens)
    times, tokens = alternate(calls, runs)
    n = num_parameters(model)
    floor_s = 2 * n * len(prompts) * new_tokens / peak
    row = {"preset": preset, "parameters": n, "peak_flops": peak, "peak_shape": shape,
           "peak_by_library": by_library, "floor_s": floor_s,
           "loadavg": os.getloadavg(), "sides": {}}
    for name in calls:
        assert tokens[name] == len(prompts) * new_tokens, f"{name} made {tokens[name]} tokens"
        median = statistics.median(times[name][2:] or times[name])
        row["sides"][name] = {"seconds": median, "tok_s": tokens[name] / median, "x_floor": median / floor_s}
    row["ours_vs_hf"] = row["sides"]["ours"]["tok_s"] / row["sides"]["HF generate"]["tok_s"]
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["1.4m", "28m"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=10, help="timed runs per side; the median skips the first two")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = SyntheticEnv(difficulty=2, train_size=2000, test_size=max(200, args.batch))
    tokenizer = train_bpe([chat.render(c) for c in solution_conversations(env)], vocab_size=384)
    prompts = [chat.prompt_ids(tokenizer, q.messages()) for q in env.problems("test")[: args.batch]]
    ids, mask = left_padded(prompts, tokenizer.pad_token_id, "cpu")
    call = HF_CALL(ids, mask, args.new_tokens, tokenizer.pad_token_id)
    peer = {k: v for k, v in call.items() if not hasattr(v, "shape")}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads\n"
          f"batch {len(prompts)}, prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
          f"{args.new_tokens} new tokens, fp32, median of runs 3..{args.runs}\n"
          f"peer: model.generate(input_ids, attention_mask, **{peer})")
    result = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
              "batch": len(prompts), "new_tokens": args.new_tokens, "rows": []}
    for preset in args.presets:
        row = bench(preset, tokenizer, prompts, args.new_tokens, args.runs)
        result["rows"].append(row)
        libs = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in row["peak_by_library"].items())
        print(f"\n{preset} ({row['parameters']:,} parameters): fp32 matmul peak "
              f"{row['peak_flops'] / 1e9:.0f} GFLOP/s at "
              f"{row['peak_shape']} ({libs}), floor {row['floor_s'] * 1e3:.0f} ms per call; load "
              f"{', '.join(f'{x:.2f}' for x in row['loadavg'])}")
        for name, side in row["sides"].items():
            print(f"  {name:18} {side['tok_s']:9.0f} tok/s  {side['seconds'] * 1e3:8.0f} ms  "
                  f"{side['x_floor']:6.2f}x floor")
        print(f"  ours / HF generate: {row['ours_vs_hf']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
