"""The Learner: a policy model, its optimizer, and one GRPO (or SFT) update per call. A plain class.

    learner = Learner(model, cfg.learner, cfg.rollout.sampling(), total_steps=cfg.run.steps)
    metrics = learner.step(groups)           # groups: P lists of G scored Trajectory
    pairs = learner.named_arrays()           # push to the rollout engines

    learner.sft_step([chat.encode(tokenizer, messages), ...])   # masked next-token loss (SFT, warm-up)

`step` = `prepare` (advantages, group filtering, old/reference logprobs) + `passes` x (`backward`
over token-budget micro-batches with gradient accumulation, then `optimizer_step`: grad-norm clip,
AdamW, warmup + cosine). The pieces are public so tests can inject known logprobs and inspect the
accumulated gradient. The driver wraps this class in a Ray actor; nothing here knows about Ray.

Logprobs are computed with the rollout's temperature / top-k / top-p (`rollout.sampling`), so the policy
optimized is exactly the one sampled from; the logits behind them are made `logprob_chunk` tokens at a time
and recomputed in the backward (`answerkey/model/completion.py`), never (tokens, vocabulary) at once. With one
pass the "old" logprobs are the current ones detached (the ratio is exactly 1; no extra forward pass); with
several passes they are computed once, before the first update. A step whose batch has no trainable token
(every group uniform) does not touch the optimizer and says so: `learner/skipped = 1`.

With `ranks` (an FSDP2 rank, learner/fsdp.py) the same code trains on this rank's share of the batch
(learner/shard.py) with the whole batch's normalizers, and `backward`'s metrics are summed over ranks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch.distributed.tensor import DTensor

from answerkey.chat import Encoded
from answerkey.config import LearnerConfig
from answerkey.envs.base import Trajectory
from answerkey.learner import checkpoint, grpo
from answerkey.learner.batch import MicroBatch, Row, TrainBatch, collate, completion_values, make_batch
from answerkey.learner.shard import Ranks
from answerkey.model import completion_logprobs, keep_freed_memory
from answerkey.model.completion import LOGPROB_CHUNK
from answerkey.rollout import weights
from answerkey.rollout.engine import SamplingParams


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then cosine or
    constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Learner:
    def __init__(self, model: torch.nn.Module, cfg: LearnerConfig, sampling: SamplingParams, total_steps: int,
                 reference: torch.nn.Module | None = None, ranks: Ranks | None = None,
                 lean: bool = True):
        """`reference`: the KL reference when kl_coef > 0 (default: a copy of `model`). `ranks`: this
        process's place in an FSDP group (learner/shard.py): the batch is split across ranks, metrics summed
        over them. `lean`: the lean Llama forward with shared prompts (answerkey/model/completion.py) where
        the model allows; else Hugging Face's forward."""
        # eval mode: no dropout, so the learner's logprobs are those of the policy the engine samples
        self.model, self.cfg, self.sampling, self.ranks = model.eval(), cfg, sampling, ranks
        self.lean = lean
        self.logprob_chunk: int | None = LOGPROB_CHUNK  # tokens whose logits exist at once (None: all)
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":
            keep_freed_memory()  # activations of a few MB per layer, recycled instead of page-faulted in
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
                                           weight_decay=cfg.weight_decay)
        total = total_steps * cfg.passes * cfg.mini_batches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total, cfg.schedule, cfg.min_lr_ratio))
        if cfg.kl_coef > 0 and reference is None:
            reference = copy.deepcopy(model)
        self.reference = reference.eval().requires_grad_(False) if cfg.kl_coef > 0 else None
        if cfg.mini_batches > 1 and ranks is not None:
            raise ValueError(f"learner.mini_batches = {cfg.mini_batches} needs learner.world_size = 1 (the "
                             "FSDP ranks split each step's batch themselves)")
        if cfg.overlong_buffer >= sampling.max_new_tokens:
            raise ValueError(f"learner.overlong_buffer ({cfg.overlong_buffer}) must be smaller than "
                             f"rollout.max_new_tokens ({sampling.max_new_tokens})")
        self.optimizer_steps = 0
        self.tokenizer = None  # saved with checkpoints (PretrainedLearner sets it)

    # -- GRPO ------------------------------------------------------------------------------------

    def step(self, groups: Sequence[Sequence[Trajectory]]) -> dict[str, float]:
        """One RL update from P groups of G scored trajectories; returns `learner/...` metrics."""
        batch = self.prepare(groups)
        metrics = dict(batch.metrics)
        if batch.norm.tokens == 0:
            return metrics | {"learner/skipped": 1.0}
        for _ in range(self.cfg.passes):
            parts = []
            for part in self.mini_batches(batch):
                self.optimizer.zero_grad(set_to_none=True)
                parts.append(self.backward(part))
                metrics |= self.optimizer_step()
            metrics |= _combine(parts)
        return metrics | {"learner/skipped": 0.0}

    def mini_batches(self, batch: TrainBatch) -> list[TrainBatch]:
        """`learner.mini_batches` parts of the batch's rows, shuffled by a generator seeded with the optimizer
        step count (checkpointed: a resumed run shuffles alike), each with its own normalizers (Dr.GRPO's
        constant split evenly); parts without a loss token are left out."""
        m = self.cfg.mini_batches
        if m == 1:
            return [batch]
        order = torch.randperm(len(batch.rows), generator=torch.Generator().manual_seed(self.optimizer_steps))
        parts = []
        for k in range(m):
            rows = [batch.rows[i] for i in order[k::m].tolist()]
            tokens = sum(sum(r.loss_mask) for r in rows)
            if tokens:
                norm = grpo.Normalizer(tokens, sum(1 for r in rows if any(r.loss_mask)),
                                       batch.norm.max_new_tokens, max(1, round(batch.norm.generated / m)))
                parts.append(TrainBatch(rows, norm))
        return parts

    def prepare(self, groups: Sequence[Sequence[Trajectory]]) -> TrainBatch:
        """Advantages and filtering; old logprobs (several optimizer steps) and reference logprobs (KL) per
        row."""
        cfg = self.cfg
        overlong = (cfg.overlong_buffer, cfg.overlong_penalty) if cfg.overlong_buffer else None
        batch = make_batch(groups, cfg.scale_by_std, cfg.drop_uniform_groups, cfg.mask_truncated,
                           self.sampling.max_new_tokens, overlong)
        if self.ranks is not None:  # FSDP: this rank's rows; the normalizers stay those of the whole batch
            batch = self.ranks.split(batch)
        if batch.norm.tokens and (cfg.passes > 1 or cfg.mini_batches > 1):
            self._fill(batch, self.model, "old_logprobs")
        if batch.norm.tokens and self.reference is not None:
            self._fill(batch, self.reference, "ref_logprobs")
        return batch

    @torch.no_grad()
    def _fill(self, batch: TrainBatch, model: torch.nn.Module, attr: str) -> None:
        for mb in batch.micro_batches(self.cfg.micro_batch_tokens):
            logprobs, _ = self.logprobs(model, mb)
            for i, values in zip(mb.index, completion_values(mb, logprobs), strict=True):
                setattr(batch.rows[i], attr, values.detach())

    def logprobs(self, model: torch.nn.Module, mb: MicroBatch,
                 sampling: SamplingParams | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Processed logprobs of the completion tokens (N, Tc) and the per-token entropy (N, Tc, no
        gradient)."""
        s = sampling or self.sampling
        dev = next(model.parameters()).device
        inputs = mb.prompt_ids.to(dev), mb.prompt_valid.to(dev), mb.prompt_index.to(dev), mb.targets.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
            return completion_logprobs(model, *inputs, s.temperature, s.top_k, s.top_p, lean=self.lean,
                                       compile=self.cfg.compile, chunk=self.logprob_chunk)

    def backward(self, batch: TrainBatch) -> dict[str, float]:
        """Accumulate the gradient of the batch loss into `.grad`, one micro-batch at a time."""
        cfg, sums = self.cfg, {}
        for mb in batch.micro_batches(cfg.micro_batch_tokens):
            logprobs, entropy = self.logprobs(self.model, mb)
            dtype = logprobs.dtype
            mask, adv = mb.loss_mask.to(self.device, dtype), mb.advantages.to(self.device, dtype)
            old = logprobs.detach() if mb.old_logprobs is None else mb.old_logprobs.to(self.device, dtype)
            ref = None if self.reference is None else mb.ref_logprobs.to(self.device, dtype)
            # a token outside the learner's top-k / top-p support has logprob -inf (as has padding): it is
            # counted and left out of the loss before any ratio or KL, where -inf - -inf would make NaN
            inside = torch.isfinite(logprobs.detach()) & torch.isfinite(old)
            if ref is not None:
                inside &= torch.isfinite(ref)
            _add(sums, "outside_support", (mask * ~inside).sum())
            mask = mask * inside
            logprobs, old = logprobs.masked_fill(~inside, 0.0), old.masked_fill(~inside, 0.0)
            if ref is not None:
                ref = ref.masked_fill(~inside, 0.0)
            pg, clipped = grpo.clipped_surrogate(logprobs, old, adv, cfg.clip_low, cfg.clip_high)
            if cfg.tis_cap is not None:
                rollout = mb.rollout_logprobs.to(self.device, dtype).masked_fill(~inside, 0.0)
                weight, ratio = grpo.tis_weights(old, rollout, cfg.tis_cap)
                pg = pg * weight
                _add(sums, "tis_ratio", (ratio * mask).sum())
                _add(sums, "tis_clipped", ((ratio > cfg.tis_cap) * mask).sum())
                _extremes(sums, "tis_ratio", ratio[mask.bool()])
            loss_terms = pg
            if ref is not None:
                kl = grpo.kl(logprobs, ref, cfg.kl_estimator)
                loss_terms = pg + cfg.kl_coef * kl
                _add(sums, "kl", (kl.detach() * mask).sum())
            loss = grpo.aggregate(loss_terms, mask, cfg.loss_agg, batch.norm)
            loss.backward()
            _add(sums, "loss", loss.detach())
            _add(sums, "pg_loss", grpo.aggregate(pg.detach(), mask, cfg.loss_agg, batch.norm))
            _add(sums, "clip_fraction", (clipped * mask).sum())
            _add(sums, "ratio", (torch.exp(logprobs.detach() - old) * mask).sum())
            _add(sums, "entropy", (entropy * mask).sum())
            _add(sums, "response_length", mask.sum())
        n = max(batch.norm.tokens, 1)
        metrics = {f"learner/{k}": float(sums[k]) for k in ("loss", "pg_loss")}
        means = ("clip_fraction", "ratio", "entropy", "kl", "tis_ratio")
        metrics |= {f"learner/{k}": float(sums[k]) / n for k in means if k in sums}
        metrics["learner/outside_support"] = float(sums["outside_support"])  # tokens left out, count
        if "tis_clipped" in sums:
            metrics["learner/tis_clipped_fraction"] = float(sums["tis_clipped"]) / n
        # the extremes exist only where a token was trained: an FSDP rank may have none (Ranks.reduce takes
        # them from the ranks that have them)
        metrics |= {f"learner/{k}": sums[k] for k in ("tis_ratio_max", "tis_ratio_min") if k in sums}
        metrics["learner/response_length"] = float(sums["response_length"]) / max(batch.norm.sequences, 1)
        return metrics if self.ranks is None else self.ranks.reduce(metrics)

    def optimizer_step(self) -> dict[str, float]:
        """Clip the gradient norm and step AdamW and the schedule; a non-finite gradient skips the update."""
        lr = self.scheduler.get_last_lr()[0]
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        # FSDP: the norm over all shards
        grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return {"learner/grad_norm": grad_norm, "learner/nonfinite_grad": 1.0, "learner/lr": lr}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer_steps += 1
        return {"learner/grad_norm": grad_norm, "learner/nonfinite_grad": 0.0, "learner/lr": lr}

    # -- SFT -------------------------------------------------------------------------------------

    def sft_step(self, examples: Sequence[Encoded]) -> dict[str, float]:
        """One optimizer step of masked next-token loss (mean over all masked tokens of the batch)."""
        rows = [Row(list(e.ids), 1, list(e.mask[1:]), [0.0] * (len(e.ids) - 1), 0.0) for e in examples]
        tokens = sum(sum(r.loss_mask) for r in rows)
        if tokens == 0:
            raise ValueError("sft_step: no example has a token to train on (the mask is all zeros)")
        plain = SamplingParams(max_new_tokens=1)  # temperature 1, no truncation: the model's own distribution
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        batch = TrainBatch(rows, grpo.Normalizer(tokens, len(rows), 1, len(rows)))
        for mb in batch.micro_batches(self.cfg.micro_batch_tokens):
            logprobs, _ = self.logprobs(self.model, mb, plain)
            loss = -(logprobs * mb.loss_mask.to(self.device, logprobs.dtype)).sum() / tokens
            loss.backward()
            loss_sum += float(loss.detach())
        return {"sft/loss": loss_sum, "sft/tokens": float(tokens)} | self.optimizer_step()

    # -- weights ---------------------------------------------------------------------------------

    def named_arrays(self):
        return weights.named_arrays(self.model)

    def weights_checksum(self, dtype: str = "float32") -> dict[str, str]:
        """{name: checksum} of the weights cast to `dtype` (what an engine running in that dtype holds)."""
        return weights.checksums(self.model, getattr(torch, dtype))

    @torch.no_grad()
    def logprobs_of(self, prompt: Sequence[int], completion: Sequence[int]) -> list[float]:
        """The policy's processed logprobs of one given completion (the sync check's reference)."""
        row = Row(list(prompt) + list(completion), len(prompt), [1] * len(completion),
                  [0.0] * len(completion), 0.0)
        mb = collate([row], [0])
        logprobs, _ = self.logprobs(self.model, mb)
        return completion_values(mb, logprobs.float())[0].tolist()

    # -- checkpoint ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything but the model weights that an exact resume needs (optimizer, schedule, counters,
        RNG: the CPU generator's, and the GPU's on a GPU)."""
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "optimizer_steps": self.optimizer_steps, "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        """The optimizer state lands on the parameters' device whatever device saved it (AdamW moves it)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.optimizer_steps = state["optimizer_steps"]
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:  # absent when a CPU learner saved it
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def save_checkpoint(self, root: str, step: int, run_state: dict, config_json: str, keep: int) -> str:
        """Write an atomic checkpoint (learner/checkpoint.py) of the policy, this learner and `run_state`."""
        if self.tokenizer is None:
            raise RuntimeError("save_checkpoint needs the tokenizer: build it as a PretrainedLearner")
        return str(checkpoint.save(root, step, self.model, self.tokenizer, self.state_dict(), run_state,
                                   config_json, keep))

    def resume(self, path: str) -> None:
        """Load the optimizer/schedule/RNG state of the checkpoint at `path` (PretrainedLearner loaded its
        model)."""
        self.load_state_dict(checkpoint.load(path).learner_state)

    def weights_nbytes(self) -> int:
        return sum(p.numel() * 4 for p in self.model.parameters())  # pushed as float32


def _combine(parts: list[dict]) -> dict:
    """One pass's backward metrics from its mini-batches': means (max / min for the extremes), and each
    mini-batch's clip fraction when there are several."""
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts if key in p]
        pick = max if key.endswith("_max") else min if key.endswith("_min") else None
        out[key] = pick(values) if pick else sum(values) / len(values)
    if len(parts) > 1:
        out |= {f"learner/clip_fraction/mb{i}": p["learner/clip_fraction"] for i, p in enumerate(parts)}
    return out


def _add(sums: dict, key: str, value: torch.Tensor) -> None:
    sums[key] = sums.get(key, 0.0) + value.detach()


def _extremes(sums: dict, key: str, values: torch.Tensor) -> None:
    """Running max and min of `values` under `<key>_max` / `<key>_min`."""
    if values.numel():
        sums[f"{key}_max"] = max(sums.get(f"{key}_max", -math.inf), float(values.max()))
        sums[f"{key}_min"] = min(sums.get(f"{key}_min", math.inf), float(values.min()))


class PretrainedLearner(Learner):
    """A Learner built from a Hugging Face checkpoint path (what a Ray actor's constructor can be given).

    On resume `path` is the checkpoint's model and `reference_path` the run's initial policy, so the KL
    reference stays the frozen initial policy however often the run was resumed. The policy and the
    reference train on `device`: "cuda" (the GPU this process sees: a Ray actor sees the one its placement
    slot reserved), "cpu", or None: cuda when torch sees a GPU, else cpu.
    """

    def __init__(self, path: str, cfg: LearnerConfig, sampling: SamplingParams, total_steps: int,
                 reference_path: str | None = None, threads: int | None = None, device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if threads:
            torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
        if cfg.gradient_checkpointing:
            from answerkey.learner.fsdp import checkpoint_layers

            checkpoint_layers(model)
        super().__init__(model, cfg, sampling, total_steps)
        if self.reference is not None and reference_path and str(reference_path) != str(path):
            reference = AutoModelForCausalLM.from_pretrained(reference_path, dtype=torch.float32)
            self.reference = reference.to(self.device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
