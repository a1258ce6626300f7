"""Llama-architecture models built with `transformers` from a size preset, so every stage and vLLM load them.

    model = build_model("tiny", vocab_size=len(tokenizer), stop_ids=chat.stop_token_ids(tokenizer))
    model.save_pretrained("runs/base")       # config.json + model.safetensors + generation_config.json

Presets are small on purpose: `tiny` (~0.2M parameters) for unit tests, `1.4m` and `28m` for
benchmarks and the demo. A user starting RL from Qwen or Llama weights skips this module entirely.
`transformers` is imported where a model is built, so that configs (which validate preset names) and
the learner's math import without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

PRESETS: dict[str, dict[str, int]] = {
    # hidden, layers, heads, kv heads, MLP width. Parameter counts are for a 512-token vocabulary.
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=192),
    "1.4m": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=384),
    "28m": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                intermediate_size=1536),
}


def build_model(preset: str, vocab_size: int, stop_ids: list[int], pad_id: int = 0, max_positions: int = 1024,
                seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialized fp32 Llama of the given preset; `stop_ids` become the generation EOS ids."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; expected one of {sorted(PRESETS)}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        eos_token_id=stop_ids[0],
        pad_token_id=pad_id,
        bos_token_id=None,
        **PRESETS[preset],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=list(stop_ids), pad_token_id=pad_id)
    return model


def num_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
