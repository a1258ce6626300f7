"""A batched sampling engine over any Hugging Face causal LM, with a preallocated KV cache.

    engine = TorchEngine.from_pretrained("runs/sft")     # or TorchEngine(model, tokenizer, precision="bf16")
    groups = engine.generate([prompt_ids], n=8, sampling=SamplingParams(temperature=1.0, max_new_tokens=64))
    groups[0][0].token_ids, groups[0][0].logprobs, groups[0][0].text, groups[0][0].finish_reason

This is the CPU rollout engine (and a GPU fallback when vLLM is not installed). It implements the
`RolloutEngine` protocol of `rollout.engine`, so the driver cannot tell it from vLLM.

How it works: the P prompts are left-padded to the longest, with position ids counted from each row's
first real token (so a prompt has the same positions as in the learner's forward), and each is run
once: its keys and values fill the cache rows of all n of its completions (B = P·n rows). The KV
cache, sized prompt + max_new_tokens, is allocated once per call — the lean Llama forward's own
(`answerkey/model/decode.py`, used for plain Llama models) or a `transformers.StaticCache` under HF's
forward (any other model, or `lean=False`; there the prompts are repeated n times, and `cache_keyword`
finds the name the forward takes the cache under). Each step feeds one token per row, samples from
`rollout.sampling.processed_logprobs` with the engine's seeded generator, and records the sampled
token's processed logprob. Rows that finished keep decoding padding (their outputs are dropped) until
every row is done; the loop ends early when all rows have stopped (with `ignore_eos` and no stop
strings there is nothing to check, so no per-step bookkeeping).

`precision="bf16"` runs generate's matmuls and KV cache in bf16 over the fp32 weights (cast once per
call); `probe` (the loop's sync check: a seeded completion) and `logprobs_of` (a given completion through
the same loop, teacher forcing) always decode in the model's own dtype, so that check stays exact.

What it deliberately does not do: continuous batching or paged attention (vLLM's job on GPU), and
a prefix cache across calls (it keeps no KV between calls, so `reset_prefix_cache` has nothing to drop).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StaticCache

from answerkey import chat
from answerkey.model import LlamaDecoder, keep_freed_memory
from answerkey.rollout import sampling as S
from answerkey.rollout import weights
from answerkey.rollout.engine import Completion, SamplingParams, make_completion

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class TorchEngine:
    def __init__(self, model: torch.nn.Module, tokenizer, stop_token_ids: Sequence[int] | None = None,
                 seed: int = 0, lean: bool = True, precision: str | None = None):
        self.model = model.eval()
        # the lean Llama forward (answerkey/model/decode.py) for a plain Llama; else HF's forward
        self.decoder = LlamaDecoder.for_model(model) if lean else None
        self.cache_kw = cache_keyword(model) if self.decoder is None else None  # for HF's forward
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)} or None (the model's dtype), "
                             f"got {precision!r}")
        self.dtype = PRECISIONS.get(precision)  # of generate's matmuls; None: the model's own dtype
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_token_ids if stop_token_ids is not None else chat.stop_token_ids(tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":
            keep_freed_memory()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.version = 0  # weight version, set by finish_weight_update
        self._updating: set[str] | None = None
        self.asleep = False

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
                        seed: int = 0, precision: str | None = None) -> TorchEngine:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, AutoTokenizer.from_pretrained(path), seed=seed, precision=precision)

    # -- sampling ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        if self.asleep:
            raise RuntimeError("TorchEngine.generate called while asleep; call wake() first")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if sampling.seed is not None:
            self.generator.manual_seed(sampling.seed)
        tokens, logprobs, lengths = self._sample([list(p) for p in prompts], n, sampling, dtype=self.dtype)
        out = []
        for r in range(len(prompts) * n):  # row r continues prompt r // n
            ids, lps = tokens[r, : lengths[r]].tolist(), logprobs[r, : lengths[r]].tolist()
            out.append(self._completion(ids, lps, sampling))
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]

    @torch.inference_mode()
    def logprobs_of(self, prompt: Sequence[int], completion: Sequence[int],
                    sampling: SamplingParams) -> list[float]:
        """Processed logprobs of a given completion, decoded through the same cached loop as `generate`
        (teacher forcing), in the model's own dtype (not `precision`): what the tests compare with a full
        forward and with the learner."""
        forced = torch.tensor([list(completion)], dtype=torch.long, device=self.device)
        fixed = replace(sampling, max_new_tokens=len(completion), ignore_eos=True, stop=())
        _, logprobs, _ = self._sample([list(prompt)], 1, fixed, forced=forced)
        return logprobs[0].tolist()

    @torch.inference_mode()
    def probe(self, prompt: Sequence[int], sampling: SamplingParams) -> Completion:
        """One completion from a generator of its own seeded with `sampling.seed` (the engine's stream
        does not move), decoded in the model's own dtype (not `precision`), so the sync check stays exact."""
        if sampling.seed is None:
            raise ValueError("probe needs sampling.seed")
        generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        tokens, logprobs, lengths = self._sample([list(prompt)], 1, sampling, generator=generator)
        length = lengths[0]
        return self._completion(tokens[0, :length].tolist(), logprobs[0, :length].tolist(), sampling)

    def _sample(self, prompts: list[list[int]], n: int, sampling: SamplingParams,
                forced: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Decode up to max_new_tokens for n rows per prompt. Returns tokens (B, T), logprobs (B, T), lengths.

        `forced` (B, T) feeds given tokens instead of sampled ones (teacher forcing, for `logprobs_of`);
        `generator` replaces the engine's own.
        """
        P, L, T = len(prompts), max(len(r) for r in prompts), sampling.max_new_tokens
        B = P * n
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and limit < L + T:
            raise ValueError(f"prompt ({L} tokens) + max_new_tokens ({T}) exceeds the model's {limit} "
                             "positions")
        dev = self.device
        input_ids = torch.full((P, L), self.pad_id, dtype=torch.long, device=dev)
        valid = torch.ones((P, L + T), dtype=torch.bool, device=dev)  # False on left padding
        for r, ids in enumerate(prompts):
            input_ids[r, L - len(ids) :] = torch.tensor(ids, device=dev)
            valid[r, : L - len(ids)] = False
        positions = (valid[:, :L].long().cumsum(-1) - 1).clamp(min=0)  # (P, L)
        next_pos = (positions[:, -1] + 1).repeat_interleave(n)  # (B,)
        stop_ids = torch.tensor(self.stop_ids, device=dev)
        out_tokens = torch.full((B, T), self.pad_id, dtype=torch.long, device=dev)
        out_logprobs = torch.zeros((B, T), dtype=torch.float32, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        lengths = torch.full((B,), T, dtype=torch.long, device=dev)
        stop_check = _StopStrings(self.tokenizer, sampling.stop) if sampling.stop else None
        # without a stop token or string to look for, skip the per-step bookkeeping and its sync
        can_stop = not sampling.ignore_eos or stop_check is not None

        forward = self._lean(input_ids, valid, positions, n, dtype) if self.decoder is not None else \
            self._hf(input_ids, valid, positions, n, dtype)
        logits = next(forward)
        for t in range(T):
            token, logprob = S.sample_token(logits, sampling.temperature, sampling.top_k, sampling.top_p,
                                            generator or self.generator,
                                            None if forced is None else forced[:, t])
            if not can_stop:
                out_tokens[:, t], out_logprobs[:, t] = token, logprob
            else:
                out_tokens[:, t] = torch.where(done, self.pad_id, token)
                out_logprobs[:, t] = torch.where(done, 0.0, logprob)
                finished = torch.isin(token, stop_ids) if not sampling.ignore_eos else torch.zeros_like(done)
                if stop_check is not None:
                    finished |= stop_check.hit(out_tokens[:, : t + 1], done)
                newly = finished & ~done
                # not lengths[newly] = ...: a bool index syncs on GPU
                lengths = torch.where(newly, t + 1, lengths)
                done |= newly
            if t == T - 1 or (can_stop and bool(done.all())):
                break
            logits = forward.send((out_tokens[:, t], next_pos + t, L + t))  # cache slot L + t
        return out_tokens.cpu(), out_logprobs.cpu(), lengths.tolist()  # one copy, not one per row

    def _lean(self, input_ids, valid, positions, n: int, dtype):
        """The lean Llama forward as a coroutine: yields logits (B, V); is sent (tokens, positions, slot) per
        step."""
        step = yield self.decoder.prefill(input_ids, valid, positions, valid.shape[1], n, dtype)
        while True:
            step = yield self.decoder.step(*step)

    def _hf(self, input_ids, valid, positions, n: int, dtype):
        """HF's forward with a `StaticCache` over every row (prompts repeated n times), the same coroutine
        shape."""
        autocast = torch.autocast(self.device.type, dtype=dtype,
                                  enabled=dtype is not None and dtype != torch.float32)
        mask = valid.long().repeat_interleave(n, dim=0)
        cache = StaticCache(config=self.model.config, max_cache_len=valid.shape[1])
        with autocast:
            out = self.model(input_ids=input_ids.repeat_interleave(n, dim=0), attention_mask=mask,
                             position_ids=positions.repeat_interleave(n, dim=0), use_cache=True,
                             logits_to_keep=1, **{self.cache_kw: cache})
        step = yield out.logits[:, -1]
        while True:
            tokens, pos, _ = step
            with autocast:
                out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None],
                                 use_cache=True, **{self.cache_kw: cache})
            step = yield out.logits[:, -1]

    def _completion(self, ids: list[int], logprobs: list[float], sampling: SamplingParams) -> Completion:
        return make_completion(self.tokenizer, self.stop_ids, ids, logprobs, sampling)

    # -- weights ----------------------------------------------------------------------------------

    def begin_weight_update(self) -> None:
        self._updating = set()

    def update_weights(self, named_weights: Iterable[tuple[str, np.ndarray]]) -> None:
        if self._updating is None:
            raise RuntimeError("update_weights called without begin_weight_update")
        self._updating |= weights.load_into(self.model, named_weights)

    def finish_weight_update(self, version: int) -> None:
        if self._updating is None:
            raise RuntimeError("finish_weight_update called without begin_weight_update")
        missing = sorted(set(dict(self.model.named_parameters())) - self._updating)
        self._updating = None
        if missing:
            raise RuntimeError(f"weight update {version} left {len(missing)} parameter(s) unchanged, e.g. "
                               f"{missing[:3]}")
        self.version = version

    def weights_checksum(self) -> dict[str, str]:
        return weights.checksums(self.model)

    # -- memory -----------------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """The KV cache lives only inside `generate`; sleeping just refuses generation until `wake`."""
        self.asleep = True

    def wake(self) -> None:
        self.asleep = False

    def reset_prefix_cache(self) -> None:
        """No KV survives a `generate` call, so there is no prefix cache to drop."""


class _StopStrings:
    """Detects stop strings in the tail of each row's decoded completion."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, tuple(stop)
        self.window = max(len(s) for s in self.stop) + 8  # tokens: every token decodes to >= 1 char or byte

    def hit(self, tokens: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        hits = torch.zeros_like(done)
        for r in (~done).nonzero().flatten().tolist():
            tail = self.tokenizer.decode(tokens[r, -self.window :].tolist(), skip_special_tokens=False)
            hits[r] = any(s in tail for s in self.stop)
        return hits


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword under which `model.forward` takes its KV cache: `cache` (transformers >= 5.24) or
    `past_key_values` (before; vLLM pins transformers < 5.21).

    Read from the forward's signature rather than the version: a name the forward does not list falls into
    its `**kwargs` unnoticed, and the model then decodes without the cache (every step sees one token: wrong
    logits, no error). A forward that lists neither (a wrapper taking only `**kwargs`) is refused.
    """
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params and params[name].kind is not inspect.Parameter.VAR_KEYWORD:
            return name
    raise TypeError(f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values` by name "
                    f"(its parameters: {list(params)}); the torch engine's HF path needs a KV cache argument")
