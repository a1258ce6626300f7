"""The receiving end of weight updates inside vLLM's worker, where the model lives (`worker_extension_cls`).

vLLM mixes `WorkerExtension` into its worker class; `VLLMEngine` (rollout/vllm_engine.py) calls these methods
with `llm.collective_rpc("answerkey_...", args=...)`. `self` is vLLM's worker: `self.get_model()` is its torch
model (fused `qkv_proj` / `gate_up_proj`, vocabulary padded), `self.device` its device, and
`self.reload_weights(weights_iterator=..., is_checkpoint_format=True)` loads Hugging Face-named tensors
through the model's own `load_weights` (which fuses q/k/v and gate/up) and re-applies vLLM's post-load
processing.
Arguments and returns are plain data (see the engine's docstring): weights as `[name, bytes, dtype, shape]`.

Importing this module on vLLM's CPU build turns off its oneDNN weight packing before the model loads: packed
linear layers keep no readable weight (their `weight` becomes an empty parameter), so neither the checksums
nor `load_weights` could see them. Matmuls then go through `F.linear` (~10% slower on the 28M model).
"""

from __future__ import annotations

import torch

from answerkey.rollout import transfer
from answerkey.rollout.vllm_engine import decode


def _keep_cpu_weights() -> None:
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        import vllm._custom_ops as ops

        ops._supports_onednn = False


_keep_cpu_weights()


class WorkerExtension:
    def answerkey_load(self, rows: list[list]) -> list[str]:
        """Load `[name, bytes, dtype, shape]` rows; returns the names loaded."""
        pairs = [(name, decode(data, dtype, shape).to(self.device)) for name, data, dtype, shape in rows]
        self.reload_weights(weights_iterator=pairs, is_checkpoint_format=True)
        return [name for name, _ in pairs]

    def answerkey_join(self, spec: dict, rank: int) -> None:
        self.answerkey_group = transfer.BroadcastGroup(transfer.GroupSpec(**spec), rank, device=self.device)

    def answerkey_receive(self) -> list:
        """Receive one broadcast into this worker's device and load it; [version, names]."""
        version, pairs = self.answerkey_group.receive()
        self.reload_weights(weights_iterator=pairs, is_checkpoint_format=True)
        return [version, [name for name, _ in pairs]]

    @torch.no_grad()
    def answerkey_checksums(self, shapes: dict[str, list[int]]) -> dict[str, str]:
        return transfer.engine_checksums(self.get_model().named_parameters(), shapes)
