"""The rollout engine protocol: token ids in, sampled token ids with their logprobs out.

Two engines implement it: `TorchEngine` (any Hugging Face causal LM, CPU or GPU, this package) and
the vLLM engine (GPU, optional extra). The driver and the envs only ever see this protocol, so
everything vLLM-specific stays behind it.

    engine.generate([prompt_ids_1, prompt_ids_2], n=8, sampling=SamplingParams(max_new_tokens=64))
    # -> [[Completion × 8], [Completion × 8]]      (P, G)

Logprobs are "processed": taken from the distribution the token was actually sampled from, after
temperature, top-k and top-p (renormalized over the kept tokens), like vLLM's
`logprobs_mode="processed_logprobs"`. The learner computes its logprobs with the same processing
(`rollout.sampling.processed_logprobs`), so on one machine in fp32 the two agree to float rounding.

Weight updates are three calls so a GPU engine can stream tensors without holding two copies:
`begin_weight_update()`, `update_weights(pairs)` (any number of times), `finish_weight_update(version)`.
`finish` fails if any parameter was not updated: a sync that silently skipped weights is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions. top_k=0 and top_p=1.0 turn those filters off."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()  # stop strings; the completion's text ends before the first one
    ignore_eos: bool = False  # for benchmarks: always generate exactly max_new_tokens
    seed: int | None = None  # None: continue the engine's own generator

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (greedy decoding is top_k=1), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


@dataclass
class Completion:
    """One sampled completion. `token_ids` include the stop token, when one was sampled."""

    token_ids: list[int]
    logprobs: list[float]  # processed logprob of each sampled token, len == len(token_ids)
    text: str  # decoded completion, cut before a stop string; stop tokens are not in the text
    finish_reason: FinishReason  # "stop": stop token or string; "length": hit max_new_tokens
    meta: dict = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def make_completion(tokenizer, stop_ids: Sequence[int], ids: list[int], logprobs: list[float],
                    sampling: SamplingParams) -> Completion:
    """A sampled completion as every engine reports it: the text decoded by our tokenizer without the stop
    token, cut before the first stop string; "stop" when a stop token or string ended it, else "length"."""
    stopped_by_token = bool(ids) and ids[-1] in stop_ids and not sampling.ignore_eos
    text = tokenizer.decode(ids[:-1] if stopped_by_token else ids, skip_special_tokens=False)
    cut = min((i for i in (text.find(s) for s in sampling.stop) if i >= 0), default=-1)
    finish = "stop" if stopped_by_token or cut >= 0 else "length"
    return Completion(token_ids=ids, logprobs=logprobs, text=text[:cut] if cut >= 0 else text,
                      finish_reason=finish)


class RolloutEngine(Protocol):
    """What a rollout worker needs from an inference engine."""

    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        """`n` completions for each prompt (token ids), as a (P, n) nested list."""
        ...

    def begin_weight_update(self) -> None: ...

    def update_weights(self, named_weights: Iterable[tuple[str, np.ndarray]]) -> None: ...

    def finish_weight_update(self, version: int) -> None: ...

    def weights_checksum(self) -> dict[str, str]:
        """Checksum per parameter name of the weights the engine generates with (`rollout.weights`)."""
        ...

    def probe(self, prompt: Sequence[int], sampling: SamplingParams) -> Completion:
        """One completion sampled with `sampling.seed` (set by the caller), without advancing the engine's
        own random stream, at the precision the loop's sync check compares with the learner's logprobs."""
        ...

    def sleep(self, level: int = 1) -> None:
        """Release memory between rollouts (KV cache; level 2 also weights, on GPU)."""
        ...

    def wake(self) -> None: ...

    def reset_prefix_cache(self) -> None:
        """Drop cached prompt KV; called after every weight update so no stale KV is reused."""
        ...
