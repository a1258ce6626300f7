"""Step metrics: one JSON line per step in the run directory, and learning curves as a PNG.

    log = MetricsLog(run_dir)
    log.write(step, {"reward/mean": 0.4, "learner/loss": 0.01})     # -> run_dir/metrics.jsonl
    log.plot(["reward/mean", "eval/reward"], run_dir / "curves.png")

Keys are namespaced (`rollout/ reward/ learner/ sync/ time/ eval/`). The JSONL is the source of
truth (append-only, flushed every line, so a crash keeps everything written so far); the plot is
drawn from it at the end for people who would rather look than read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path


class MetricsLog:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step} | {k: (float(v) if math.isfinite(float(v)) else str(v))
                                for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def plot(self, keys: Sequence[str], out: str | Path, title: str = "") -> Path:
        """One panel per key, value against step (only the steps that logged the key)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read()
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), float)]
            if points:
                ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None)
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return Path(out)
