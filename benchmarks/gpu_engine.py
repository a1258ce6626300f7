"""Torch engine tokens/s on one GPU against Hugging Face `model.generate`, side by side in one process.

    python benchmarks/gpu_engine.py                 # 28m preset, batch 64, 64 new tokens, fp32 then bf16
    python benchmarks/gpu_engine.py --json out.json # also write the numbers as JSON
    python benchmarks/gpu_engine.py --device cpu --preset tiny --batch 4 --new-tokens 8 --repeats 1  # try

Both sides sample `batch` completions (temperature 1, no top-k/top-p) of exactly `new_tokens` tokens
(EOS ignored: `ignore_eos` for ours, `min_new_tokens` for HF) from the same left-padded prompts (held-out
problems of the synthetic world), with the same freshly initialized Llama preset and a BPE tokenizer
built on the spot; HF uses its default dynamic KV cache. Each is warmed up once, then timed `repeats`
times (median; CUDA synchronized). tokens/s counts new tokens, prefill included. Read the ratio
ours/HF; absolute numbers depend on the card, its clocks and the host CPU (a 28M model at batch 64 is
bound by kernel launches, not by the GPU's arithmetic). On CUDA it also counts the GPU->CPU
synchronizations of one call of each side (`torch.cuda.set_sync_debug_mode`).

What it does not measure: vLLM, torch.compile or CUDA graphs (neither side uses them), long prompts, or
memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import transformers

from answerkey import chat
from answerkey.envs.synthetic import SyntheticEnv
from answerkey.model import build_model, num_parameters
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.pretrain.tokenizer import train_bpe
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def timed(fn: Callable[[], int], device: str, repeats: int) -> tuple[float, int]:
    """(median seconds, tokens of the last call) of `fn` after one warm-up call."""
    fn()
    seconds, tokens = [], 0
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        tokens = fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), tokens


def count_syncs(fn: Callable[[], int], device: str) -> int | None:
    """GPU->CPU synchronizations during one call of `fn` (None off CUDA)."""
    if device != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def left_padded(prompts: list[list[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, L - len(p):] = torch.tensor(p)
        mask[r, L - len(p):] = 1
    return ids.to(device), mask.to(device)


def measure(model, tokenizer, prompts: list[list[int]], new_tokens: int, device: str, repeats: int) -> dict:
    engine = TorchEngine(model, tokenizer, seed=0)
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True)
    ids, mask = left_padded(prompts, tokenizer.pad_token_id, device)

    def ours() -> int:
        return sum(len(c.token_ids) for g in engine.generate(prompts, 1, sampling) for c in g)

    def hf() -> int:
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                             top_p=1.0,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
        return int(out[:, ids.shape[1]:].numel())

    ours_s, ours_tokens = timed(ours, device, repeats)
    hf_s, hf_tokens = timed(hf, device, repeats)
    return {"ours_s": ours_s, "hf_s": hf_s, "ours_tokens": ours_tokens, "hf_tokens": hf_tokens,
            "ours_tok_s": ours_tokens / ours_s, "hf_tok_s": hf_tokens / hf_s,
            "ratio": (ours_tokens / ours_s) / (hf_tokens / hf_s),
            "ours_syncs": count_syncs(ours, device), "hf_syncs": count_syncs(hf, device)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="28m")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    env = SyntheticEnv(difficulty=2, train_size=2000, test_size=max(200, args.batch))
    tokenizer = train_bpe([chat.render(c) for c in solution_conversations(env)], vocab_size=384)
    prompts = [chat.prompt_ids(tokenizer, p.messages()) for p in env.problems("test")[: args.batch]]
    model = build_model(args.preset, len(tokenizer), chat.stop_token_ids(tokenizer),
                        pad_id=tokenizer.pad_token_id)
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    result = {"card": card, "torch": torch.__version__, "transformers": transformers.__version__,
              "preset": args.preset,
              "parameters": num_parameters(model), "batch": len(prompts), "new_tokens": args.new_tokens,
              "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))], "rows": []}
    print(f"{card}, torch {torch.__version__}, transformers {transformers.__version__}; {args.preset} preset "
          f"({result['parameters']:,} parameters), batch {len(prompts)}, prompts of "
          f"{result['prompt_tokens']} tokens, "
          f"{args.new_tokens} new tokens, median of {args.repeats}")
    print(f"{'dtype':6} {'ours tok/s':>11} {'HF tok/s':>10} {'ours/HF':>8} {'syncs ours':>11} "
          f"{'syncs HF':>9}")
    for name, dtype in DTYPES.items():
        row = {"dtype": name} | measure(model.to(args.device, dtype), tokenizer, prompts, args.new_tokens,
                                        args.device, args.repeats)
        result["rows"].append(row)
        print(f"{name:6} {row['ours_tok_s']:11.0f} {row['hf_tok_s']:10.0f} {row['ratio']:8.2f} "
              f"{row['ours_syncs']!s:>11} {row['hf_syncs']!s:>9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
