"""Typed configs of the pretraining and SFT stages, loaded like the RL config: TOML + dotted overrides.

    cfg = load_pretrain_config("examples/pretrain_tiny.toml",
                               ["--data.paths=['corpus.jsonl']", "--train.steps=50"])
    cfg = PretrainConfig(data=CorpusConfig(paths=["corpus.jsonl"]), train=TrainConfig(steps=50))
    cfg = load_sft_config("examples/sft_tiny.toml", ["--model.path=runs/base/model"])

Same machinery as `answerkey.config` (one pydantic model per section, `extra="forbid"`, strict
types, a docstring per field shown by `answerkey pretrain --docs`, `ConfigError` naming the key).
The two stages share `[train]` (optimizer, schedule, batch, precision) and `[run]` (run directory,
evaluation, samples, checkpoints); `[data]` and `[model]` differ: pretraining reads documents and
builds a model from a preset, SFT reads conversations and starts from a checkpoint directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from answerkey.config import Section, load_config
from answerkey.model import PRESETS


class CorpusConfig(Section):
    paths: list[str] = Field(default_factory=list)
    """Corpus files or directories: .jsonl = one document per line's `text` field; any other file = one
    document."""
    heldout_fraction: float = Field(0.05, gt=0, lt=1)
    """Fraction of documents (chosen by a hash of their text) kept out of training for the held-out loss."""
    seq_len: int = Field(256, ge=2)
    """Tokens per training row (windows of the concatenated documents; attention may cross documents)."""


class TokenizerConfig(Section):
    path: str = ""
    """Tokenizer directory to use (tokenizer.json with the chat special tokens); empty = train one on the
    corpus."""
    vocab_size: int = Field(512, ge=264)
    """Vocabulary size of a tokenizer trained here (256 bytes + 8 special tokens + merges)."""
    split_digits: bool = False
    """Give every digit its own token (instead of GPT-4's groups of up to 3) in a tokenizer trained here."""
    trainer: Literal["hf", "rustbpe"] = "hf"
    """BPE trainer: HF `tokenizers`, or rustbpe (faster; `pip install rustbpe`), exported to the same HF
    files."""


class PresetConfig(Section):
    preset: str = "tiny"
    """Llama size preset of answerkey/model/presets.py (PRESETS: tiny, 1.4m, 28m, ...)."""
    max_positions: int = Field(1024, ge=2)
    """Context length the model supports (max_position_embeddings); later stages prompt + generate within
    it."""

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; expected one of {sorted(PRESETS)}")
        return v


class TrainConfig(Section):
    steps: int = Field(200, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(16, ge=1)
    """Rows per optimizer step."""
    micro_batch_size: int = Field(16, ge=1)
    """Rows per forward/backward; batch_size must be a multiple (gradient accumulation over the rest)."""
    lr: float = Field(3e-3, gt=0)
    """Peak AdamW learning rate."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Floor of the cosine decay, as a fraction of lr."""
    warmup_steps: int = Field(20, ge=0)
    """Optimizer steps of linear warmup from 0 to lr."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW decoupled weight decay of the matrices (norm gains are not decayed)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Clip the global gradient norm to this value."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute precision: fp32, or bf16 autocast over fp32 weights (faster from the 1.4m preset up on a CPU
    with bf16 matmuls; benchmarks/pretrain.py compares the two)."""
    threads: int = Field(0, ge=0)
    """torch threads on CPU during the run (0 = the caller's setting); for tiny models 1 can beat 2 when
    other work shares the CPU."""
    seed: int = 0
    """Seed of the initialization, the data order and the printed samples."""
    time_budget_s: float = Field(0.0, ge=0)
    """Stop once the loop has run this many wall-clock seconds, even before `steps` (0 = no limit); the last
    step reached gets the final held-out loss and checkpoint. The demo's SFT-continued control uses it."""

    @field_validator("micro_batch_size")
    @classmethod
    def _accumulation(cls, v: int, info: ValidationInfo) -> int:
        batch = info.data.get("batch_size", v)
        if batch % v:
            raise ValueError(f"batch_size ({batch}) must be a multiple of micro_batch_size ({v})")
        return v


class StageRunConfig(Section):
    out_dir: str = "runs"
    """Parent directory of run directories."""
    name: str = ""
    """Run directory name under out_dir (default: <stage>-<date>-<time>); --resume needs the same name."""
    eval_every: int = Field(50, ge=0)
    """Held-out loss every N steps (and after the last; 0 = only after the last)."""
    eval_rows: int = Field(64, ge=0)
    """Held-out rows evaluated (the first N; 0 = all)."""
    sample_every: int = Field(100, ge=0)
    """Print and log samples every N steps (and after the last; 0 = never)."""
    samples: list[str] = Field(default_factory=list)
    """Sample prompts: document prefixes (pretrain) or user messages (SFT); empty = a blank document and the
    start of a held-out document (pretrain), the first held-out prompts (SFT)."""
    sample_tokens: int = Field(48, ge=1)
    """New tokens per printed sample."""
    sample_temperature: float = Field(1.0, gt=0)
    """Temperature of the printed samples."""
    checkpoint_every: int = Field(0, ge=0)
    """Save a checkpoint every N steps (0 = only after the last step)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Complete checkpoints kept on disk; older ones are deleted after a newer one is written."""
    tensorboard: bool = False
    """Also write metrics to TensorBoard (run_dir/tb; needs the `tensorboard` package)."""
    wandb_project: str = ""
    """Also log metrics to this Weights & Biases project (needs `wandb`; empty = off)."""


class PretrainConfig(Section):
    DOCS: ClassVar[str] = "answerkey pretrain --docs"
    data: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: PresetConfig = PresetConfig()
    train: TrainConfig = TrainConfig()
    run: StageRunConfig = StageRunConfig()

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if not self.data.paths:
            raise ValueError("data.paths: no corpus files given (e.g. --data.paths=\"['corpus.jsonl']\")")
        if self.model.max_positions < self.data.seq_len:
            raise ValueError(f"model.max_positions ({self.model.max_positions}) must be >= data.seq_len "
                             f"({self.data.seq_len})")
        return self


class ConversationsConfig(Section):
    paths: list[str] = Field(default_factory=list)
    """Training conversations: JSONL files, one {"messages": [{"role", "content"}, ...]} per line."""
    heldout_paths: list[str] = Field(default_factory=list)
    """Held-out conversations (same format); empty = heldout_fraction of `paths`, chosen by a hash."""
    heldout_fraction: float = Field(0.05, gt=0, lt=1)
    """Fraction of `paths`' conversations held out when heldout_paths is empty."""
    seq_len: int = Field(512, ge=2)
    """Tokens per training row; longer conversations are cut (and counted)."""
    pack: bool = True
    """Pack several conversations into each row (positions restart per conversation, no attention across
    them)."""


class StartConfig(Section):
    path: str = ""
    """Checkpoint directory to start from (model + tokenizer), e.g. a pretraining run's model/."""


class SFTConfig(Section):
    DOCS: ClassVar[str] = "answerkey sft --docs"
    data: ConversationsConfig = ConversationsConfig()
    model: StartConfig = StartConfig()
    train: TrainConfig = TrainConfig()
    run: StageRunConfig = StageRunConfig()

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if not self.data.paths:
            raise ValueError("data.paths: no conversation files given "
                             "(e.g. --data.paths=\"['chats.jsonl']\")")
        if not self.model.path:
            raise ValueError("model.path: SFT starts from a checkpoint directory "
                             "(e.g. --model.path=runs/base/model)")
        return self


def load_pretrain_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PretrainConfig:
    return load_config(path, overrides, PretrainConfig)


def load_sft_config(path: str | Path | None, overrides: Sequence[str] = ()) -> SFTConfig:
    return load_config(path, overrides, SFTConfig)
