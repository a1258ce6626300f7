"""Our math reward side by side with Math-Verify on the same labelled cases, each in a killable worker.

    pip install -e .[bench]                       # math-verify 0.9.0
    python -m benchmarks.math_checker             # ~10k cases; prints a markdown table
    python -m benchmarks.math_checker --quick     # the hand-written table and adversarial rows only

Cases (label = should the response be credited):
  table        tests/math_table.py: every rule, positives and negatives, Math-Verify's reported misses
  adversarial  power towers, huge factorials, 100k-character and 5,000-deep inputs (label: no credit)
  scripted     tests/math_forms.py over the MATH-500 and GSM8K test golds (every 4th GSM8K gold by
               default): equivalent rewrites (credit) and wrong ones (no credit)
  solutions    each MATH-500 / GSM8K row's own worked solution against its gold (credit)

Latency and throughput are over the non-adversarial cases (throughput = cases / their summed
latency, one worker, so per core). Math-Verify is called as verl calls it (`math_metric` with the
gold wrapped in `\\boxed{}`, Expr and LaTeX extraction for the response). Both checkers run one item
at a time in one worker process of `rewards.deadline_pool.DeadlinePool` with the same 5 s kill, so
a Math-Verify hang is counted "at bound" instead of stalling the run; latency is the round trip per
item (IPC included for both) and throughput is items per second of that one worker, i.e. per core.
Our checker runs its full pipeline inside the worker here (fast path included); through
`score_batch` the fast path runs in the caller. Comparative numbers only: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from answerkey.envs import gsm8k as gsm8k_env  # noqa: E402
from answerkey.envs.jsonl import jsonl_lines  # noqa: E402
from answerkey.envs.math import MATH500  # noqa: E402
from answerkey.rewards.deadline_pool import DeadlinePool  # noqa: E402
from answerkey.rewards.math.check import check  # noqa: E402
from answerkey.rewards.score import Status  # noqa: E402
from tests.math_adversarial import ADVERSARIAL  # noqa: E402
from tests.math_forms import equivalent_forms, wrong_forms  # noqa: E402
from tests.math_table import TABLE  # noqa: E402

BOUND_S = 5.0


@dataclass
class Case:
    group: str
    response: str
    gold: str
    label: bool  # should the response be credited?


def ours(response: str, gold: str) -> bool:
    return check(response, gold).status == Status.correct


_MV = None


def math_verify(response: str, gold: str) -> bool:
    """verl's `math_verify.compute_score`: gold boxed, Expr + LaTeX extraction for the prediction."""
    global _MV
    if _MV is None:
        import logging

        logging.disable(logging.CRITICAL)  # it logs every failed extraction, 100k-character inputs included
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, math_metric

        _MV = math_metric(gold_extraction_target=(LatexExtractionConfig(),),
                          pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()))
    try:
        score, _ = _MV([f"\\boxed{{{gold}}}"], [response])
    except Exception:  # noqa: BLE001 - verl turns any exception into a score of 0
        return False
    return score == 1.0


def cases(quick: bool, gsm_every: int) -> list[Case]:
    out = [Case("table", r, g, status == Status.correct) for r, g, status in TABLE]
    # two adversarial rows do hold a correct answer (stray closing braces, null bytes); the rest must
    # not be credited
    out += [Case("adversarial", r, g, Status.correct in allowed) for r, g, allowed in ADVERSARIAL]
    if quick:
        return out
    math500 = [row for _, row, _ in jsonl_lines(MATH500)]
    gsm8k = [row for _, row, _ in jsonl_lines(gsm8k_env.TEST)]
    golds = [row["answer"] for row in math500]
    golds += [row["answer"].rpartition("####")[2].strip() for row in gsm8k[::gsm_every]]
    for gold in golds:
        out += [Case("scripted", form, gold, True) for form in equivalent_forms(gold)]
        out += [Case("scripted", form, gold, False) for form in wrong_forms(gold)]
    out += [Case("solutions", row["solution"], row["answer"], True) for row in math500]
    out += [Case("solutions", row["answer"], row["answer"].rpartition("####")[2].strip(), True)
            for row in gsm8k[::gsm_every]]
    return out


def run(target: str, init: str | None, items: list[Case]) -> tuple[list[bool | None], list[float], float]:
    """Verdict (None = killed at the bound or crashed) and latency per item, plus the total wall time."""
    pool = DeadlinePool(target, workers=1, init=init)
    pool.map([("\\boxed{1}", "1")], timeout_s=60)  # start and warm the worker outside the clock
    verdicts, latencies = [], []
    start = time.perf_counter()
    for case in items:
        t = time.perf_counter()
        kind, value = pool.map([(case.response, case.gold)], timeout_s=BOUND_S)[0]
        latencies.append(time.perf_counter() - t)
        verdicts.append(value if kind == "ok" else None)
    total = time.perf_counter() - start
    pool.close()
    return verdicts, latencies, total


def summarize(name: str, items: list[Case], verdicts: list, latencies: list[float], total: float) -> dict:
    normal = [k for k, c in enumerate(items) if c.group != "adversarial"]
    at_bound = [k for k, v in enumerate(verdicts) if v is None or latencies[k] >= 0.95 * BOUND_S]
    right = sum(bool(verdicts[k]) == items[k].label for k in normal)
    fp = sum(bool(verdicts[k]) and not items[k].label for k in normal)
    fn = sum(not verdicts[k] and items[k].label for k in normal)
    lat = sorted(latencies[k] * 1000 for k in normal)
    pct = {p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] for p in (50, 90, 99)}
    by_group = {}
    for group in ("table", "scripted", "solutions"):
        idx = [k for k in normal if items[k].group == group]
        if idx:
            by_group[group] = sum(bool(verdicts[k]) == items[k].label for k in idx) / len(idx)
    credited = sum(bool(verdicts[k]) for k, c in enumerate(items) if c.group == "adversarial" and not c.label)
    return {"checker": name, "cases": len(normal), "accuracy": right / len(normal), "false_pos": fp,
            "false_neg": fn, "at_bound_normal": sum(k in set(normal) for k in at_bound),
            "at_bound_adversarial": len(at_bound) - sum(k in set(normal) for k in at_bound),
            "adversarial_credited": credited, "p50_ms": pct[50], "p90_ms": pct[90], "p99_ms": pct[99],
            "max_ms": lat[-1], "mean_ms": statistics.fmean(lat),
            "items_per_s_per_core": len(normal) / sum(latencies[k] for k in normal),
            "wall_s": total, "by_group": by_group}


def table(rows: list[dict]) -> str:
    keys = [("accuracy", "{:.1%}"), ("false_pos", "{}"), ("false_neg", "{}"), ("at_bound_normal", "{}"),
            ("at_bound_adversarial", "{}"), ("adversarial_credited", "{}"), ("p50_ms", "{:.1f}"),
            ("p90_ms", "{:.1f}"), ("p99_ms", "{:.1f}"), ("max_ms", "{:.0f}"),
            ("items_per_s_per_core", "{:.0f}")]
    lines = ["| metric | " + " | ".join(r["checker"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    lines.append(f"| non-adversarial cases | {' | '.join(str(r['cases']) for r in rows)} |")
    for key, fmt in keys:
        lines.append(f"| {key} | " + " | ".join(fmt.format(r[key]) for r in rows) + " |")
    for group in rows[0]["by_group"]:
        accuracies = " | ".join(f"{r['by_group'][group]:.1%}" for r in rows)
        lines.append(f"| accuracy on {group} | {accuracies} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="hand-written and adversarial rows only")
    parser.add_argument("--gsm-every", type=int, default=4, help="use every Nth GSM8K row (1 = all 1319)")
    parser.add_argument("--json", type=Path, help="also write the summaries here")
    args = parser.parse_args()
    items = cases(args.quick, args.gsm_every)
    print(f"{len(items)} cases", file=sys.stderr)
    rows = []
    checkers = (("answerkey", "benchmarks.math_checker:ours", "answerkey.rewards.math.equiv:warm_up"),
                ("Math-Verify 0.9.0", "benchmarks.math_checker:math_verify", None))
    for name, target, init in checkers:
        verdicts, latencies, total = run(target, init, items)
        rows.append(summarize(name, items, verdicts, latencies, total))
        print(f"{name}: done in {total:.0f} s", file=sys.stderr)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
