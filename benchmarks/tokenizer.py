"""BPE training time: HF `tokenizers` (what pretrain/tokenizer.py uses) vs rustbpe + an export to HF format.

    python benchmarks/tokenizer.py                 # GSM8K train text, vocab 512 / 2048 / 8192, 5 runs
    python benchmarks/tokenizer.py --copies 4 --vocab 4096 --runs 3

Protocol: the same corpus (GSM8K train questions + answers shipped in envs/data/, repeated `--copies`
times), the same GPT-4 split regex and the same final vocabulary size (256 bytes + 8 special tokens
+ merges; rustbpe gets V - 8 and the specials are added on export). The sides alternate, `runs`
times each; the median is reported. The rustbpe side is `rustbpe.Tokenizer.train_from_iterator`
plus the export (`pretrain.tokenizer.from_ranks`: its merge ranks -> a `tokenizers` BPE with our
pre-tokenizer and special tokens), so both end with the same kind of object. The export is checked:
on 500 documents its ids equal a tiktoken Encoding built from rustbpe's ranks. Torch is not involved;
both trainers use every core they are given (rayon / the tokenizers thread pool).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import rustbpe
import tiktoken

from answerkey import chat
from answerkey.envs import gsm8k
from answerkey.envs.jsonl import jsonl_lines
from answerkey.pretrain.tokenizer import GPT4_SPLIT, from_ranks, train_bpe


def corpus(copies: int) -> list[str]:
    rows = [row for _, row, _ in jsonl_lines(gsm8k.TRAIN)]
    return [f"{r['question']}\n{r['answer']}" for r in rows] * copies


def train_rustbpe(texts: list[str], vocab_size: int):
    """rustbpe's trainer + the export to HF format (`from_ranks`), as `train_bpe(trainer="rustbpe")` does."""
    t = rustbpe.Tokenizer()
    t.train_from_iterator(iter(texts), vocab_size - len(chat.SPECIAL_TOKENS), pattern=GPT4_SPLIT)
    return t, from_ranks(ranks_of(t))


def ranks_of(t) -> dict[bytes, int]:
    return {bytes(b): r for b, r in t.get_mergeable_ranks()}


def check_export(raw, hf, texts: list[str]) -> int:
    ref = tiktoken.Encoding("rustbpe", pat_str=GPT4_SPLIT, mergeable_ranks=ranks_of(raw), special_tokens={})
    bad = sum([i + 8 for i in ref.encode(t)] != hf.encode(t, add_special_tokens=False) for t in texts)
    return bad


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--copies", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    texts = corpus(args.copies)
    print(f"corpus: {len(texts)} documents, {sum(map(len, texts)) / 1e6:.1f} MB; {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()[0]:.1f}; rustbpe and HF tokenizers side by side, median of {args.runs}")
    result = {"documents": len(texts), "rows": []}
    for vocab in args.vocab:
        times = {"HF tokenizers": [], "rustbpe + export": []}
        for _ in range(args.runs):
            start = time.perf_counter()
            hf = train_bpe(texts, vocab)
            times["HF tokenizers"].append(time.perf_counter() - start)
            start = time.perf_counter()
            raw, exported = train_rustbpe(texts, vocab)
            times["rustbpe + export"].append(time.perf_counter() - start)
        bad = check_export(raw, exported, texts[:500])
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"vocab": vocab, "hf_s": med["HF tokenizers"], "rustbpe_s": med["rustbpe + export"],
               "rustbpe_over_hf": med["rustbpe + export"] / med["HF tokenizers"], "export_mismatches": bad,
               "sizes": [len(hf), len(exported)]}
        result["rows"].append(row)
        print(f"vocab {vocab:5d}: HF tokenizers {row['hf_s']:.2f} s, "
              f"rustbpe + export {row['rustbpe_s']:.2f} s "
              f"(rustbpe takes {row['rustbpe_over_hf']:.2f}x HF's time); export ids == tiktoken on "
              f"{500 - bad}/500 documents; vocab sizes {row['sizes']}")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return result


if __name__ == "__main__":
    main()
