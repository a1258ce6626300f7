"""VLLMEngine: the rollout engine protocol (`rollout/engine.py`) on vLLM 0.33.0, for GPUs.

    pip install 'answerkey[vllm]'                     # pins vllm==0.33.0 (which pins its CUDA torch 2.14.0)
    engine = VLLMEngine("checkpoints/qwen2.5-0.5b-instruct", seed=0)
    groups = engine.generate([prompt_ids], n=8, sampling=SamplingParams(max_new_tokens=512))   # (P, G)
    engine.begin_weight_update(); engine.update_weights(pairs); engine.finish_weight_update(step)
    engine.weights_checksum()                          # {HF name: checksum}, computed inside vLLM's worker

NEVER RUN: no test runs it (the PyPI vLLM wheel cannot generate on CPU, and tests/gpu/ does not use it). What
is checked in CI is the contract: tests/test_vllm_contract.py reads the pinned wheel's source and checks that
every vLLM name, keyword and method used here exists there (`VLLM_ATTRIBUTES` lists the attributes read from
vLLM's objects, which an AST cannot type). `import vllm` happens on first use only.

Only public vLLM RL APIs: `LLM(...)` with `logprobs_mode="processed_logprobs"` (logprobs after
temperature / top-k / top-p, like the torch engine), `enable_sleep_mode`, `enable_prefix_caching`
and `worker_extension_cls`; `SamplingParams(logprobs=0)` (the sampled token's logprob);
`sleep`/`wake_up`; `reset_prefix_cache` after every update; `collective_rpc` into `WorkerExtension`,
which runs inside vLLM's worker process and reuses our transfer code (`rollout/transfer.py`): the
object-store arrays, the NCCL `BroadcastGroup` (shared with the gloo path tested on CPU) or CUDA IPC
handles when colocated, each loaded with the model's own `load_weights` (which fuses qkv / gate_up).
The checksum is computed in the worker from the fused parameters it holds, mapped back to HF names
(`transfer.hf_views`). Tensor parallelism > 1 is refused: the checksum would see one shard. The
default dtype is float32 because the driver compares with the learner's fp32 checksums; a bf16 engine
needs the driver to expect `transfer.expected_checksums(model, torch.bfloat16)` (not wired yet).

Not here: vLLM's native `weight_transfer_config` backends (they changed between 0.2x minors), async
engines, the HTTP server, LoRA, multimodal prompts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from answerkey.rollout import transfer
from answerkey.rollout.engine import Completion, SamplingParams

VLLM_VERSION = "0.33.0"
EXTENSION = "answerkey.rollout.vllm_engine.WorkerExtension"
# Attributes read from vLLM objects (for the contract test; module path -> class -> names).
VLLM_ATTRIBUTES = {
    "vllm/outputs.py": {"RequestOutput": ["outputs", "prompt_logprobs"],
                        "CompletionOutput": ["token_ids", "logprobs", "text", "finish_reason"]},
    "vllm/logprobs.py": {"Logprob": ["logprob"]},
    "vllm/v1/worker/gpu_worker.py": {"Worker": ["get_model", "device"]},
    "vllm/model_executor/models/llama.py": {"LlamaForCausalLM": ["load_weights"]},
    "vllm/model_executor/models/qwen2.py": {"Qwen2ForCausalLM": ["load_weights"]},
}


def _vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"the vLLM engine needs vllm=={VLLM_VERSION}: pip install 'answerkey[vllm]' "
                          f"({exc})") from None
    if vllm.__version__ != VLLM_VERSION:
        raise ImportError(f"answerkey's vLLM engine is written against vllm=={VLLM_VERSION}; found "
                          f"{vllm.__version__}")
    return vllm


def hf_shapes(model_path: str) -> dict[str, tuple[int, ...]]:
    """{HF parameter name: shape} of the checkpoint, from its config on the meta device (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


class VLLMEngine:
    def __init__(self, model_path: str, seed: int = 0, dtype: str = "float32",
                 gpu_memory_utilization: float = 0.5, max_model_len: int | None = None,
                 enable_sleep_mode: bool = True, tensor_parallel_size: int = 1):
        if tensor_parallel_size != 1:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size}: the vLLM engine verifies weights "
                             "on one GPU only (each rank would checksum a shard); use 1 and more rollout "
                             "workers")
        from transformers import GenerationConfig

        vllm = _vllm()
        self.llm = vllm.LLM(model=model_path, seed=seed, dtype=dtype, tensor_parallel_size=1,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            enable_prefix_caching=True, enable_sleep_mode=enable_sleep_mode,
                            logprobs_mode="processed_logprobs", worker_extension_cls=EXTENSION)
        self.tokenizer = self.llm.get_tokenizer()
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        self.stop_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.shapes = hf_shapes(model_path)
        self.version, self._loaded = 0, None

    # -- sampling ---------------------------------------------------------------------------------

    def _params(self, sampling: SamplingParams, n: int, **extra: Any):
        return _vllm().SamplingParams(
            n=n, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, stop=list(sampling.stop) or None, stop_token_ids=self.stop_token_ids,
            ignore_eos=sampling.ignore_eos, seed=sampling.seed, skip_special_tokens=True, **extra)

    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        vllm = _vllm()
        requests = [vllm.TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, self._params(sampling, n, logprobs=0), use_tqdm=False)
        return [[_completion(c) for c in out.outputs] for out in outputs]

    def logprobs_of(self, prompt: Sequence[int], completion: Sequence[int],
                    sampling: SamplingParams) -> list[float]:
        """Logprobs of a given completion, read as prompt logprobs of prompt + completion (the driver's sync
        check)."""
        ids = list(prompt) + list(completion)
        params = self._params(sampling, 1, prompt_logprobs=0)
        out = self.llm.generate([_vllm().TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        return [out.prompt_logprobs[i][ids[i]].logprob for i in range(len(prompt), len(ids))]

    # -- weights ----------------------------------------------------------------------------------

    def begin_weight_update(self) -> None:
        self._loaded = set()

    def update_weights(self, named_weights: Iterable[tuple[str, np.ndarray]]) -> None:
        """Arrays from the object store, sent into the worker process by `collective_rpc`."""
        self._loaded |= set(self.llm.collective_rpc("answerkey_load", args=(list(named_weights),))[0])

    def update_weights_ipc(self, handles: list[tuple[str, Any]]) -> None:
        """Colocated on one GPU: CUDA IPC handles of the learner's tensors (`transfer.ipc_handles`).
        vLLM pickles them only with VLLM_ALLOW_INSECURE_SERIALIZATION=1."""
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self._loaded |= set(self.llm.collective_rpc("answerkey_load_ipc", args=(handles,))[0])

    def join_weight_group(self, spec: transfer.GroupSpec, rank: int) -> None:
        """Disaggregated: join the learner's NCCL broadcast group (call on every member at once)."""
        self.llm.collective_rpc("answerkey_join", args=(spec, rank))

    def receive_weights(self) -> int:
        """Receive one broadcast (`BroadcastGroup.send` on the learner); returns the sender's version."""
        version, names = self.llm.collective_rpc("answerkey_receive")[0]
        self._loaded |= set(names)
        return version

    def finish_weight_update(self, version: int) -> None:
        if self._loaded is None:
            raise RuntimeError("finish_weight_update called without begin_weight_update")
        missing = sorted(set(self.shapes) - self._loaded)
        self._loaded = None
        if missing:
            raise RuntimeError(f"weight update {version} left {len(missing)} parameter(s) unchanged, e.g. "
                               f"{missing[:3]}")
        self.version = version

    def weights_checksum(self) -> dict[str, str]:
        return self.llm.collective_rpc("answerkey_checksums", args=(self.shapes,))[0]

    # -- memory -----------------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Level 1 offloads the weights to CPU and drops the KV cache; level 2 drops both (reload all weights
        after)."""
        self.llm.sleep(level=level)

    def wake(self) -> None:
        self.llm.wake_up(tags=None)

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()


def _completion(c) -> Completion:
    if c.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a completion with {c.finish_reason!r} (expected 'stop' or "
                           "'length')")
    ids = list(c.token_ids)
    return Completion(token_ids=ids,
                      logprobs=[step[t].logprob for step, t in zip(c.logprobs, ids, strict=True)],
                      text=c.text, finish_reason=c.finish_reason)


class WorkerExtension:
    """Mixed into vLLM's GPU worker (`worker_extension_cls`); each method runs in every worker via
    `collective_rpc`. `self` is vLLM's `Worker`: `self.get_model()` is the torch model, `self.device` its
    GPU."""

    def answerkey_load(self, pairs: list[tuple[str, np.ndarray]]) -> list[str]:
        tensors = [(name, torch.as_tensor(a).to(self.device)) for name, a in pairs]
        self.get_model().load_weights(weights=tensors)
        return [name for name, _ in tensors]

    def answerkey_load_ipc(self, handles: list[tuple[str, Any]]) -> list[str]:
        tensors = list(transfer.open_ipc_handles(handles, self.device.index))
        self.get_model().load_weights(weights=tensors)
        return [name for name, _ in tensors]

    def answerkey_join(self, spec: transfer.GroupSpec, rank: int) -> None:
        self.answerkey_group = transfer.BroadcastGroup(spec, rank, device=self.device)

    def answerkey_receive(self) -> tuple[int, list[str]]:
        version, tensors = self.answerkey_group.receive()
        self.get_model().load_weights(weights=tensors)
        return version, [name for name, _ in tensors]

    def answerkey_checksums(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
        return transfer.engine_checksums(self.get_model().named_parameters(), shapes)
