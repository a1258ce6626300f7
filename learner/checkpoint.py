"""Atomic checkpoints for exact resume: a kill at any moment leaves the last complete one loadable.

    save(run_dir / "checkpoints", step=4, model=model, tokenizer=tok, learner_state=learner.state_dict(),
         run_state={"sampler": ..., "rng": ...}, config_json=cfg.model_dump_json(), keep=2)
    path = latest(run_dir / "checkpoints")          # checkpoints/step_000004, or None
    ckpt = load(path)                               # Checkpoint(step, learner_state, run_state, config)

One checkpoint directory holds `model/` (a Hugging Face checkpoint: config.json, safetensors, tokenizer files;
loads in `transformers`, vLLM and `answerkey rl --model.path`), `learner.pt` (optimizer, lr schedule,
counters, the learner's RNG: CPU, and CUDA on a GPU), `run.pt` (the loop's state: the data position and every
rollout engine's RNG) and `config.json` (the resolved run config).

Atomicity: everything is written into `.tmp-step_000004-<pid>/`, every file is fsynced, the
directory is renamed to `step_000004` (atomic within one filesystem) and the parent directory is
fsynced. So a `step_*` directory is always complete; a kill mid-write leaves only a `.tmp-*`
directory, which the next `save` or `clean_partial` removes. Older checkpoints beyond `keep` are
deleted only after the new one is in place. Loading uses `torch.load(weights_only=True)`.
`begin` / `commit` are those steps on their own, for the FSDP learner's sharded checkpoints
(learner/dcp.py: `dcp/` instead of `model/`, the same atomicity).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PREFIX = "step_"
FILES = ("model/config.json", "learner.pt", "run.pt", "config.json")
SHARDED_FILES = ("dcp/.metadata", "hf/config.json", "learner.pt", "run.pt", "config.json")  # learner/dcp.py


@dataclass
class Checkpoint:
    path: Path
    step: int
    learner_state: dict[str, Any]
    run_state: dict[str, Any]
    config: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def sharded(self) -> bool:
        """An FSDP checkpoint (learner/dcp.py): `dcp/` shards + `hf/` config and tokenizer, no `model/`."""
        return (self.path / "dcp").is_dir()


def save(root: str | Path, step: int, model, tokenizer, learner_state: dict, run_state: dict,
         config_json: str, keep: int = 2) -> Path:
    """Write checkpoint `step` under `root` atomically; returns its final path."""
    tmp, final = begin(root, step)
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    torch.save(learner_state, tmp / "learner.pt")
    torch.save(run_state | {"step": step}, tmp / "run.pt")
    (tmp / "config.json").write_text(config_json)
    return commit(tmp, final, keep)


def begin(root: str | Path, step: int) -> tuple[Path, Path]:
    """(temporary directory to write checkpoint `step` into, its final path); partial ones are cleaned
    first."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clean_partial(root)
    final = root / f"{PREFIX}{step:06d}"
    return root / f".tmp-{final.name}-{os.getpid()}", final


def commit(tmp: Path, final: Path, keep: int) -> Path:
    """fsync everything under `tmp`, rename it to `final`, fsync the parent, prune to the newest `keep`."""
    _fsync_tree(tmp)
    if final.exists():  # a re-run of the same step after a resume: replace it, the new one is complete
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    for old in complete(final.parent)[:-keep]:
        shutil.rmtree(old)
    return final


def save_model(directory: str | Path, model, tokenizer) -> Path:
    """Write a Hugging Face checkpoint directory (model + tokenizer) the same atomic way; replaces an old
    one."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    return final


def complete(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                  and p.name[len(PREFIX):].isdigit())


def latest(root: str | Path) -> Path | None:
    found = complete(root)
    return found[-1] if found else None


def clean_partial(root: str | Path) -> list[Path]:
    """Delete `.tmp-*` directories left by a kill mid-write; returns what was deleted."""
    root = Path(root)
    partial = [p for p in root.glob(".tmp-*") if p.is_dir()] if root.is_dir() else []
    for p in partial:
        shutil.rmtree(p)
    return partial


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint's states; the model itself is loaded from `model_dir` by whoever needs it."""
    path = Path(path)
    files = SHARDED_FILES if (path / "dcp").is_dir() else FILES
    missing = [f for f in files if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {missing}")
    # onto the CPU whatever device wrote them (a GPU learner's optimizer state), so that any machine reads a
    # checkpoint; the learner moves its state onto its parameters' device
    run_state = torch.load(path / "run.pt", weights_only=True, map_location="cpu")
    learner_state = torch.load(path / "learner.pt", weights_only=True, map_location="cpu")
    return Checkpoint(path, int(run_state["step"]), learner_state, run_state,
                      json.loads((path / "config.json").read_text()))


def _fsync_tree(top: Path) -> None:
    for dirpath, _, files in os.walk(top):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
