"""Pretraining throughput on CPU: tokens/s and MFU at the demo's model sizes, fp32 vs bf16 autocast, side
by side.

    python benchmarks/pretrain.py                  # tiny and 1.4m presets, 16 x 128-token rows, 2 threads
    python benchmarks/pretrain.py --presets 1.4m 28m --steps 20 --json out.json

Protocol: the real training step (`pretrain.loop.StageLoop.train_step`: forward, the masked next-token
loss `answerkey.model.nll_sum`, backward, clip, AdamW + schedule) on windows of GSM8K train text (shipped
in envs/data/), encoded with one 512-token BPE tokenizer. Per preset, two copies of the same
freshly initialized model train side by side, one in fp32 and one under bf16 autocast, their steps
alternating (after 2 warm-up steps each), so load changes on a shared machine hit both alike.
Reported per side: tokens / median step time; the bf16/fp32 speed is the median of the per-round
ratios. MFU = achieved FLOP/s / the matmul peak measured in the same process (best of a few
2048^3 GEMMs, benchmarks/floor.py) in the side's compute dtype, and against the fp32 peak. FLOPs
per trained token: 6 N + 12 n_layers d T (PaLM's count; N = parameters with the tied embedding
counted once, as the LM head's matmul; T = context length).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from floor import matmul_peak  # benchmarks/ is the script's folder, so on sys.path
from rich.console import Console

from answerkey import chat
from answerkey.envs import gsm8k
from answerkey.envs.jsonl import jsonl_lines
from answerkey.model import PRESETS, build_model, num_parameters
from answerkey.pretrain import corpus, pretrain
from answerkey.pretrain.config import TrainConfig, load_pretrain_config
from answerkey.pretrain.loop import Stage, StageLoop
from answerkey.pretrain.tokenizer import train_bpe
from answerkey.rundir import RunDir


def flops_per_token(preset: str, vocab: int, seq_len: int) -> float:
    p = PRESETS[preset]
    n = num_parameters(build_model(preset, vocab, [2]))
    return 6 * n + 12 * p["num_hidden_layers"] * p["hidden_size"] * seq_len


def side_by_side(preset: str, shards, tok, args, work: Path) -> dict[str, list[float]]:
    """Step times of an fp32 and a bf16-autocast copy of one model, steps alternating."""
    cfg = load_pretrain_config(None, [f"--data.paths=['{work / 'corpus.jsonl'}']", f"--run.out_dir={work}"])
    rows = pretrain.TokenWindows(shards.train, args.seq_len)
    stage = Stage("pretrain", rows, [], [], lambda p, t: t)
    loops = {}
    for precision in ("fp32", "bf16"):
        train = TrainConfig(steps=args.steps + 2, batch_size=args.batch, micro_batch_size=args.batch,
                            precision=precision)
        model = build_model(preset, len(tok), chat.stop_token_ids(tok), pad_id=tok.pad_token_id, seed=0)
        loops[precision] = StageLoop(stage, model, tok, train, RunDir(work, cfg), Console(quiet=True))
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for step in range(args.steps + 2):
        for precision, loop in loops.items():
            seconds = loop.train_step()["time/step_s"]
            if step >= 2:
                times[precision].append(seconds)
    return times


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "1.4m"])
    p.add_argument("--steps", type=int, default=20, help="timed steps per side (after 2 warm-up steps)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_peak()[0], "bf16": matmul_peak(dtype=torch.bfloat16)[0]}
    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    texts = [row for _, row, _ in jsonl_lines(gsm8k.TRAIN)]
    (work / "corpus.jsonl").write_text("".join(json.dumps({"text": f"{r['question']}\n{r['answer']}"}) + "\n"
                                               for r in texts))
    tok = train_bpe((f"{r['question']}\n{r['answer']}" for r in texts), 512)
    shards = corpus.encode_corpus(tok, [work / "corpus.jsonl"], work / "data", heldout_fraction=0.05)
    print(f"torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.1f}; "
          f"matmul peak fp32 "
          f"{peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s; {args.batch} rows x "
          f"{args.seq_len} tokens per step, {args.steps} timed steps per side, alternating")
    result = {"peaks": peaks, "threads": args.threads, "rows": []}
    tokens = args.batch * (args.seq_len - 1)  # trained targets per step
    for preset in args.presets:
        times = side_by_side(preset, shards, tok, args, work)
        for precision in ("fp32", "bf16"):
            tok_s = tokens / statistics.median(times[precision])
            achieved = tok_s * flops_per_token(preset, len(tok), args.seq_len)
            row = {"preset": preset, "precision": precision, "tokens_per_s": tok_s, "gflops": achieved / 1e9,
                   "mfu": achieved / peaks[precision], "mfu_of_fp32_peak": achieved / peaks["fp32"]}
            result["rows"].append(row)
            print(f"{preset:5} {precision}: {tok_s:8.0f} tokens/s  {row['gflops']:6.2f} GFLOP/s  "
                  f"MFU {row['mfu']:.1%} of the {precision} peak ({row['mfu_of_fp32_peak']:.1%} of fp32's)")
        ratio = statistics.median(f / b for f, b in zip(times["fp32"], times["bf16"], strict=True))
        result[f"{preset}_bf16_speedup"] = ratio
        print(f"{preset}: bf16 autocast is {ratio:.2f}x the speed of fp32 (median of {args.steps} paired "
              "steps)")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    shutil.rmtree(work)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
