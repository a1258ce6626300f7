"""Peak memory and time of the learner's forward + backward, its logits made all at once vs a chunk at a time.

    python benchmarks/logprob_chunks.py                     # 1.4m preset, 32k vocabulary, 8 x 8 x 128 tokens
    python benchmarks/logprob_chunks.py --vocab 151936 --tokens 64 --json out.json   # Qwen2.5's vocabulary

One GRPO batch of P = 8 problems x G = 8 completions of `--tokens` tokens each (random ids, prompts of 40,
fixed seed) on a freshly initialized preset with a `--vocab`-token vocabulary, in one micro-batch (N * Tc =
8192 tokens at 128). Two sides, each in its own process so that their peaks do not mix, alternated
`--rounds` times: `Learner.backward` with `logprob_chunk = None` (all (N, Tc, V) logits at once, kept for the
backward with their log-softmax: the learner before `answerkey/model/completion.py` chunked them) and with
the shipped `LOGPROB_CHUNK` (the LM head and the logprobs a chunk of tokens at a time, recomputed in the
backward).

Reported per side: the median seconds of `backward` over `--repeats` calls after one warm-up, and the peak
resident memory the calls added (the process's high-water mark, `ru_maxrss`, after them minus before them).
On CPU the learner makes glibc keep freed memory for reuse (`keep_freed_memory`), so this peak includes what
the heap holds but cannot reuse; with `--glibc-default` it does not (blocks over 32 MB are then mapped and
unmapped one by one), which is closer to the tensors alive at once. CPU only: on a GPU the number to read
is `torch.cuda.max_memory_allocated` (tests/gpu/test_learner_cuda.py prints it).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time

import torch

from answerkey.config import LearnerConfig
from answerkey.envs.base import Trajectory
from answerkey.learner import learner as learner_module
from answerkey.learner.learner import Learner
from answerkey.model import build_model
from answerkey.model.completion import LOGPROB_CHUNK
from answerkey.rewards.score import Score, Status
from answerkey.rollout.engine import SamplingParams

P, G, PROMPT = 8, 8, 40


def groups(vocab: int, tokens: int, seed: int = 0) -> list[list[Trajectory]]:
    rng = random.Random(seed)
    out = []
    for _ in range(P):
        prompt = [rng.randrange(8, vocab) for _ in range(PROMPT)]
        out.append([Trajectory(prompt, [rng.randrange(8, vocab) for _ in range(tokens)], [1] * tokens,
                               [-10.0] * tokens, Score(rng.random(), Status.partial), "length")
                    for _ in range(G)])
    return out


def side(args: argparse.Namespace) -> dict:
    """One side in this process: the median `backward` time and the peak memory its calls added."""
    torch.set_num_threads(args.threads)
    if args.glibc_default:
        learner_module.keep_freed_memory = lambda: False
    model = build_model(args.preset, args.vocab, [1], seed=0)
    cfg = LearnerConfig(lr=1e-5, micro_batch_tokens=10**6, compile=False)
    learner = Learner(model, cfg, SamplingParams(max_new_tokens=args.tokens), total_steps=1)
    learner.logprob_chunk = None if args.side == "all" else LOGPROB_CHUNK
    batch = learner.prepare(groups(args.vocab, args.tokens))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for _ in range(args.repeats + 1):
        learner.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        learner.backward(batch)
        times.append(time.perf_counter() - start)
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    return {"side": args.side, "seconds": statistics.median(times[1:]), "peak_added_gb": added}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="1.4m")
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--tokens", type=int, default=128, help="completion tokens per row")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per process, after a warm-up")
    p.add_argument("--rounds", type=int, default=2, help="processes per side, alternated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--glibc-default", action="store_true", help="do not make glibc keep freed memory")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--side", choices=["all", "chunked"], help=argparse.SUPPRESS)  # one side, in this process
    args = p.parse_args(argv)
    if args.side:
        result = side(args)
        print(json.dumps(result))
        return result
    own = ["--preset", args.preset, "--vocab", str(args.vocab), "--tokens", str(args.tokens), "--repeats",
           str(args.repeats), "--threads", str(args.threads)]
    own += ["--glibc-default"] if args.glibc_default else []
    runs: dict[str, list[dict]] = {"all": [], "chunked": []}
    for _ in range(args.rounds):
        for name in runs:
            out = subprocess.run([sys.executable, __file__, *own, "--side", name], capture_output=True,
                                 text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {name: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "peak_added_gb")}
               for name, rs in runs.items()}
    result = {"preset": args.preset, "vocab": args.vocab, "rows": P * G, "tokens_per_row": args.tokens,
              "chunk": LOGPROB_CHUNK, "threads": args.threads, "glibc_default": args.glibc_default,
              "sides": summary, "runs": runs}
    glibc = ", glibc default" if args.glibc_default else ""
    print(f"{args.preset}, vocabulary {args.vocab}, {P * G} rows x {args.tokens} tokens, "
          f"chunk {LOGPROB_CHUNK}, {args.threads} threads{glibc}; medians of {args.rounds} processes x "
          f"{args.repeats} calls:")
    for name, s in summary.items():
        print(f"  logits {name:>7}: backward {s['seconds']:.2f} s, peak memory added "
              f"{s['peak_added_gb']:.2f} GB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
