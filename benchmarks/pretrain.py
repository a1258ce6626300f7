"""Pretraining throughput on CPU: tokens/s and MFU at the demo's model sizes, fp32 vs bf16 autocast, side by side.

    python benchmarks/pretrain.py                           # tiny and 1.4m presets, 16 x 128-token rows, 2 threads
    python benchmarks/pretrain.py --presets 1.4m 28m --steps 12 --runs 3 --json out.json

Protocol: the real stage (`answerkey.pretrain.pretrain.run`: the shared loop, AdamW, the masked
next-token loss) on GSM8K train text from ../shared/data with one 512-token BPE tokenizer, for
`steps` optimizer steps per run, no samples, held-out loss only after the last step. The sides
(preset x precision) alternate, `runs` times each, so load changes hit every side alike. Reported
per side: the median of `pretrain/tokens_per_s` over steps 3.. of every run (each step's forward,
backward and optimizer step, timed inside the loop), and MFU = achieved FLOP/s / the machine's
matmul peak measured in the same process (best of a few 2048^3 GEMMs, benchmarks/engine.py) in the
side's compute dtype (fp32 or bf16), and against the fp32 peak. FLOPs per trained token:
6 N + 12 n_layers d T (PaLM's count; N = parameters with the tied embedding counted once, as the
LM head's matmul; T = context length).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch
from engine import matmul_peak  # benchmarks/ is the script's folder, so on sys.path
from rich.console import Console

from answerkey.pretrain import pretrain
from answerkey.pretrain.config import load_pretrain_config
from answerkey.pretrain.model import PRESETS, build_model, num_parameters
from answerkey.pretrain.tokenizer import save_tokenizer, train_bpe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def flops_per_token(preset: str, vocab: int, seq_len: int) -> float:
    p = PRESETS[preset]
    n = num_parameters(build_model(preset, vocab, [2]))
    return 6 * n + 12 * p["num_hidden_layers"] * p["hidden_size"] * seq_len


def one_run(work: Path, name: str, preset: str, precision: str, args) -> list[float]:
    overrides = [f"--data.paths=['{work / 'corpus.jsonl'}']", f"--tokenizer.path={work / 'tok'}", f"--run.out_dir={work}",
                 f"--run.name={name}", f"--model.preset={preset}", f"--train.precision={precision}",
                 f"--train.steps={args.steps}", f"--train.batch_size={args.batch}", f"--train.micro_batch_size={args.batch}",
                 f"--data.seq_len={args.seq_len}", "--run.sample_every=0", "--run.eval_every=0", "--run.eval_rows=1",
                 f"--train.threads={args.threads}"]
    pretrain.run(load_pretrain_config(None, overrides), Console(quiet=True))
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    return [r["pretrain/tokens_per_s"] for r in rows if r["step"] > 2]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "1.4m"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_peak(), "bf16": matmul_peak(dtype=torch.bfloat16)}
    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    texts = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    (work / "corpus.jsonl").write_text("".join(json.dumps({"text": f"{r['question']}\n{r['answer']}"}) + "\n" for r in texts))
    tok = train_bpe((f"{r['question']}\n{r['answer']}" for r in texts), 512)
    save_tokenizer(tok, work / "tok")
    print(f"torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.1f}; matmul peak fp32 "
          f"{peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s; {args.batch} rows x "
          f"{args.seq_len} tokens per step, {args.steps} steps per run, {args.runs} runs per side, alternating")
    sides = [(preset, precision) for preset in args.presets for precision in args.precisions]
    speeds: dict[tuple[str, str], list[float]] = {s: [] for s in sides}
    for run in range(args.runs):
        for preset, precision in sides:
            speeds[(preset, precision)] += one_run(work, f"{preset}-{precision}-{run}", preset, precision, args)
    result = {"peaks": peaks, "threads": args.threads, "rows": []}
    for preset, precision in sides:
        tok_s = statistics.median(speeds[(preset, precision)])
        achieved = tok_s * flops_per_token(preset, len(tok), args.seq_len)
        row = {"preset": preset, "precision": precision, "tokens_per_s": tok_s, "gflops": achieved / 1e9,
               "mfu": achieved / peaks[precision], "mfu_of_fp32_peak": achieved / peaks["fp32"]}
        result["rows"].append(row)
        print(f"{preset:5} {precision}: {tok_s:8.0f} tokens/s  {row['gflops']:6.2f} GFLOP/s  MFU {row['mfu']:.1%} of the "
              f"{precision} peak ({row['mfu_of_fp32_peak']:.1%} of fp32's)")
    for preset in args.presets:
        if {"fp32", "bf16"} <= set(args.precisions):
            ratio = statistics.median(speeds[(preset, "bf16")]) / statistics.median(speeds[(preset, "fp32")])
            print(f"{preset}: bf16 autocast / fp32 tokens/s = {ratio:.2f}x")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
