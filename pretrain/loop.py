"""The training loop that pretraining and SFT share: next-token loss over fixed rows, and all around it.

    stage = Stage("pretrain", rows, heldout, prompts, show)       # what differs between the two stages
    model_dir = train(stage, model, tokenizer, cfg, run, console, resume_from=None, on_step=hook)

Each optimizer step takes the next `batch_size` rows of a seeded, epoch-wise permutation of the
training rows (a pure function of the step: the data position is just the step), runs them as
`batch_size / micro_batch_size` forward/backward passes (gradient accumulation: the loss of every
micro-batch is divided by the step's trained-token count, so the gradient is that of the whole
batch), and steps the RL `Learner`'s AdamW + warmup/cosine schedule with gradient-norm clipping
(`Learner.optimizer_step`; the learner's public API, `answerkey.learner.Learner`). The loss is
`answerkey.model.nll_sum`, the loss `Learner.sft_step` computes through the learner's own forward.

Around it: a rich progress bar; one metrics row per step in `metrics.jsonl` (`<stage>/loss`,
`<stage>/lr`, `<stage>/grad_norm`, `<stage>/tokens`, `<stage>/tokens_per_s`, `time/step_s`, and
`<stage>/heldout_loss` every `run.eval_every` steps); samples printed and written to
`samples.jsonl` every `run.sample_every` steps (their own seeded generator, so they never change
training); atomic checkpoints (`learner/checkpoint.py`: HF model + tokenizer, optimizer, schedule,
RNG, data position) every `run.checkpoint_every` steps and after the last; `loss.png`; and the
final HF checkpoint directory `run_dir/model`, which is returned.

Resume restores all of that from the latest checkpoint and cuts the JSONL files back to its step, so
a resumed run's losses and final weights equal an uninterrupted run's (tests/test_pretrain.py).
`train.time_budget_s` ends the run early, at the first step that finishes past the budget (so a
budgeted run is not exactly resumable: where it stops depends on the machine's speed).
`on_step(step, metrics)` runs after each step's logging and checkpoint (the demo's hook; raising
from it stops the run, and `--resume` continues from the last checkpoint).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from rich.console import Console

from answerkey.config import LearnerConfig
from answerkey.learner import Learner, checkpoint
from answerkey.model import forward_logits, nll_sum, num_parameters
from answerkey.pretrain.config import StageRunConfig, TrainConfig
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine
from answerkey.rundir import RunDir, progress_bar

OnStep = Callable[[int, dict[str, float]], None]


@dataclass
class Batch:
    """One micro-batch of N rows of L tokens; position t of the targets is token t+1."""

    input_ids: torch.Tensor  # (N, L)
    loss_mask: torch.Tensor  # (N, L-1) 1 where target t+1 is trained
    # (N, L) padding, (N, 1, L, L) bool block-causal, or None (causal)
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None  # (N, L), or None (0..L-1)

    @property
    def tokens(self) -> int:
        return int(self.loss_mask.sum())


class Rows(Protocol):
    """The training rows of a stage: `len(rows)` of them, any subset collated into a `Batch`."""

    def __len__(self) -> int: ...

    def batch(self, index: Sequence[int]) -> Batch: ...


@dataclass
class Stage:
    name: str  # "pretrain" or "sft": the metric namespace
    rows: Rows  # training rows
    heldout: list[Batch]  # held-out micro-batches
    prompts: list[list[int]]  # token ids the printed samples continue
    show: Callable[[list[int], str], str]  # (prompt ids, completion text) -> one printable sample


def row_order(n: int, seed: int, start: int, count: int) -> list[int]:
    """Rows start..start+count of the endless stream: epoch e visits all n rows in the order rng(seed, e)."""
    return [int(_permutation(n, seed, r // n)[r % n]) for r in range(start, start + count)]


@functools.lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class StageLoop:
    """One pretraining or SFT run over a `Stage`'s rows: steps, held-out loss, samples, checkpoints."""

    def __init__(self, stage: Stage, model, tokenizer, cfg: TrainConfig, run: RunDir, console: Console):
        self.stage, self.model, self.tokenizer, self.cfg = stage, model, tokenizer, cfg
        self.run, self.console = run, console
        self.run_cfg: StageRunConfig = run.cfg.run
        learner_cfg = LearnerConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, adam_betas=cfg.adam_betas,
                                    warmup_steps=cfg.warmup_steps, schedule="cosine",
                                    min_lr_ratio=cfg.min_lr_ratio, max_grad_norm=cfg.max_grad_norm,
                                    precision=cfg.precision)
        self.learner = Learner(model, learner_cfg, SamplingParams(), total_steps=cfg.steps)
        self.learner.tokenizer = tokenizer
        self.step = 0
        self.tokens = 0  # trained tokens so far
        self.last = False  # this step is the run's last (`steps` reached, or the time budget spent)

    def restore(self, path: Path) -> None:
        """Continue from checkpoint `path` (its model weights are already in `self.model`)."""
        ckpt = checkpoint.load(path)
        changed = stream_changes(ckpt.config, self.run.cfg.model_dump(mode="json"))
        if changed:
            was = ", ".join(f"{k}={a!r}" for k, a, _ in changed)
            now = ", ".join(f"{k}={b!r}" for k, _, b in changed)
            raise ValueError(f"--resume: {path} was trained with {was}; this run has {now}: the rows it "
                             "trains on would not continue the run's (set them back, or start a new "
                             "run.name)")
        self.learner.load_state_dict(ckpt.learner_state)
        self.step, self.tokens = ckpt.step, int(ckpt.run_state["tokens"])
        state = ckpt.run_state
        if state["rows"] != self.step * self.cfg.batch_size or state["stage"] != self.stage.name:
            raise ValueError(f"{path}: not a {self.stage.name} checkpoint of this batch size "
                             f"(run state {state})")
        self.run.truncate(self.step)
        self.console.print(f"resumed {self.stage.name} from {path} at step {self.step}")

    def train_step(self) -> dict[str, float]:
        cfg, name = self.cfg, self.stage.name
        start = time.perf_counter()
        index = row_order(len(self.stage.rows), cfg.seed, self.step * cfg.batch_size, cfg.batch_size)
        batches = [self.stage.rows.batch(index[i : i + cfg.micro_batch_size])
                   for i in range(0, cfg.batch_size, cfg.micro_batch_size)]
        tokens = sum(b.tokens for b in batches)
        if tokens == 0:
            raise ValueError(f"{name} step {self.step + 1}: no row of the batch has a token to train on")
        self.learner.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for b in batches:
            logits = forward_logits(self.model, b.input_ids, b.attention_mask, cfg.precision, b.position_ids)
            loss = nll_sum(logits, b.input_ids[:, 1:], b.loss_mask) / tokens
            loss.backward()
            loss_sum += float(loss.detach())
        update = self.learner.optimizer_step()
        self.step += 1
        self.tokens += tokens
        seconds = time.perf_counter() - start
        return {f"{name}/loss": loss_sum, f"{name}/lr": update["learner/lr"],
                f"{name}/grad_norm": update["learner/grad_norm"],
                f"{name}/nonfinite_grad": update["learner/nonfinite_grad"],
                f"{name}/tokens": float(self.tokens),
                f"{name}/tokens_per_s": tokens / seconds, "time/step_s": seconds}

    @torch.no_grad()
    def heldout_loss(self) -> float:
        total = sum(b.tokens for b in self.stage.heldout)
        loss = sum(float(nll_sum(forward_logits(self.model, b.input_ids, b.attention_mask, self.cfg.precision,
                                                b.position_ids), b.input_ids[:, 1:], b.loss_mask))
                   for b in self.stage.heldout)
        return loss / max(total, 1)

    def samples(self) -> list[dict]:
        """Continue every prompt once (seeded by the step, with a generator of their own)."""
        r = self.run_cfg
        engine = TorchEngine(self.model, self.tokenizer, seed=self.cfg.seed * 1_000_003 + self.step)
        sampling = SamplingParams(max_new_tokens=r.sample_tokens, temperature=r.sample_temperature)
        groups = engine.generate(self.stage.prompts, 1, sampling)
        self.model.train()
        return [{"prompt": self.tokenizer.decode(p, skip_special_tokens=False), "completion": g[0].text,
                 "finish_reason": g[0].finish_reason, "shown": self.stage.show(p, g[0].text)}
                for p, g in zip(self.stage.prompts, groups, strict=True)]

    def due(self, every: int) -> bool:
        return self.last or (every > 0 and self.step % every == 0)

    def save(self) -> Path:
        state = {"rows": self.step * self.cfg.batch_size, "tokens": self.tokens, "stage": self.stage.name}
        return Path(self.learner.save_checkpoint(str(self.run.checkpoints), self.step, state,
                                                 self.run.cfg.model_dump_json(indent=2),
                                                 self.run_cfg.keep_checkpoints))

    def fit(self, on_step: OnStep | None = None) -> None:
        name, r = self.stage.name, self.run_cfg
        self.model.train()
        started, budget = time.perf_counter(), self.cfg.time_budget_s
        with progress_bar(self.console) as bar:
            task = bar.add_task(name, total=self.cfg.steps, completed=self.step, info="")
            while not self.last and self.step < self.cfg.steps:
                metrics = self.train_step()
                spent = bool(budget and time.perf_counter() - started >= budget)
                self.last = self.step == self.cfg.steps or spent
                if self.due(r.eval_every) and self.stage.heldout:
                    metrics[f"{name}/heldout_loss"] = self.heldout_loss()
                self.run.log(self.step, metrics)
                if r.sample_every and self.due(r.sample_every) and self.stage.prompts:
                    rows = self.samples()
                    self.run.samples(self.step, rows)
                    for row in rows:
                        bar.console.print(f"step {self.step} sample: {row['shown']}", markup=False,
                                          highlight=False)
                if self.due(r.checkpoint_every):
                    self.save()
                info = f"loss {metrics[f'{name}/loss']:.3f}"
                if f"{name}/heldout_loss" in metrics:
                    info += f" held-out {metrics[f'{name}/heldout_loss']:.3f}"
                bar.update(task, completed=self.step, info=info)
                if on_step:
                    on_step(self.step, metrics)

    def describe(self) -> str:
        cfg, rows = self.cfg, self.stage.rows
        accum = cfg.batch_size // cfg.micro_batch_size
        epochs = cfg.steps * cfg.batch_size / len(rows)
        heldout = sum(b.input_ids.shape[0] for b in self.stage.heldout)
        return (f"{type(self.model).__name__}, {num_parameters(self.model):,} parameters; "
                f"{cfg.batch_size} rows per step ({accum} micro-batch(es) of {cfg.micro_batch_size}); "
                f"{cfg.steps} steps = {epochs:.2f} epochs of {len(rows)} training rows; {heldout} held-out "
                f"rows; {cfg.precision}, {torch.get_num_threads()} threads")


@contextlib.contextmanager
def torch_threads(n: int):
    """Use `n` torch threads inside the block (0 = leave as is), and restore the caller's count after it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# what decides which rows each step trains on (batch_size: checked by the checkpoint's row count)
STREAM_KEYS = ("data", "train.seed")


def stream_changes(saved: dict, now: dict) -> list[tuple[str, object, object]]:
    """(dotted key, checkpoint's value, this run's value) for every `STREAM_KEYS` setting that differs."""
    def flat(cfg: dict, key: str) -> dict:
        value = cfg
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            return {f"{key}.{k}": v for k, v in value.items()}
        return {key: value}

    out = []
    for key in STREAM_KEYS:
        a, b = flat(saved, key), flat(now, key)
        out += [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return out


def resume_point(run: RunDir, resume: bool, console: Console) -> Path | None:
    """The latest complete checkpoint to resume from; None (and the logs cut to step 0) when there is none."""
    if not resume:
        return None
    path = checkpoint.latest(run.checkpoints)
    if path is None:
        console.print(f"--resume: {run.checkpoints} holds no complete checkpoint; starting at step 0")
        run.truncate(0)
    return path


def train(stage: Stage, model, tokenizer, cfg: TrainConfig, run: RunDir, console: Console,
          resume_from: Path | None = None, on_step: OnStep | None = None) -> Path:
    """Run the loop to `cfg.steps` and return `run_dir/model` (an HF checkpoint directory)."""
    loop = StageLoop(stage, model, tokenizer, cfg, run, console)
    if resume_from is not None:
        loop.restore(resume_from)
    console.print(f"[bold]{stage.name}:[/] {loop.describe()}")
    loop.fit(on_step)
    last = run.metrics.read()
    keys = [f"{stage.name}/loss", f"{stage.name}/heldout_loss", f"{stage.name}/lr"]
    run.metrics.plot(keys, run.path / "loss.png", f"{stage.name}: {run.path.name}")
    final = [row for row in last if f"{stage.name}/heldout_loss" in row]
    if final and math.isfinite(final[-1][f"{stage.name}/heldout_loss"]):
        loss, step = final[-1][f"{stage.name}/heldout_loss"], final[-1]["step"]
        console.print(f"{stage.name}: final held-out loss {loss:.4f} at step {step}")
    return checkpoint.save_model(run.path / "model", model, tokenizer)
