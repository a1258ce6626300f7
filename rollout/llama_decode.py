"""A lean forward for Llama-architecture models in the torch engine: the same weights, far fewer ops per token.

    decoder = LlamaDecoder.for_model(model)           # None when the model is not a plain Llama
    logits = decoder.prefill(input_ids, valid, positions, max_len)   # (B, V) at the last prompt position
    logits = decoder.step(tokens, positions, slot)    # (B, V): one new token per row, written at cache `slot`

Why: at rollout batch sizes a small model spends most of each decode step outside its matmuls — in
module calls, a causal mask and rotary table rebuilt every step, a cache `index_copy`, and eager
RMSNorm. This path reads the parameters of the Hugging Face module directly (no copies: a weight
update by `rollout.weights.load_into` or an in-place optimizer step is seen at once, and the
checksums the driver compares are of exactly these tensors; the concatenated q|k|v and gate|up matrices
are rebuilt from them at the start of every call) and does per layer: fused RMSNorm, one q/k/v and one
gate/up matmul, rotary on queries and keys together with cos/sin computed once per step, a slice write into
a preallocated KV cache (left padding puts every row's new token in the same slot), SDPA with a
padding mask computed once per call, and the MLP.

Numerics equal Hugging Face's forward to float rounding (the engine tests compare processed
logprobs with a full HF forward at 1e-4, and the driver compares with the learner at 1e-5). Models
it does not cover (rope scaling other than the default, attention or MLP bias, other activations,
sliding windows, non-Llama architectures) fall back to the HF forward in `TorchEngine`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = ("llama",)


class LlamaDecoder:
    def __init__(self, model):
        self.model = model
        cfg = model.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.layers = model.model.layers
        self.rotary = model.model.rotary_emb
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.fused: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer (w_qkv, w_gate_up), rebuilt per call
        self.key_valid: torch.Tensor | None = None  # (B, 1, 1, S) True where a cache slot holds a real token

    @classmethod
    def for_model(cls, model) -> LlamaDecoder | None:
        """A decoder when every feature of the model is one this path implements, else None."""
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_TYPES:
            return None
        rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
        plain = (rope.get("rope_type", "default") == "default" and cfg.hidden_act == "silu"
                 and not getattr(cfg, "attention_bias", False) and not getattr(cfg, "mlp_bias", False)
                 and getattr(cfg, "pretraining_tp", 1) == 1)
        return cls(model) if plain else None

    def prefill(self, input_ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, max_len: int) -> torch.Tensor:
        """Run the (left-padded) prompts, fill the cache's first L slots; logits of the last position (B, V).

        valid: (B, max_len) bool, True for real prompt tokens and every generated slot; positions: (B, L).
        """
        B, L = input_ids.shape
        # one matmul for q, k, v and one for gate, up: fewer, larger GEMMs. Concatenated once per call (the
        # weights cannot change during a call), so a later weight update or optimizer step is always seen.
        self.fused = [(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                       torch.cat([m.gate_proj.weight, m.up_proj.weight]))
                      for a, m in ((layer.self_attn, layer.mlp) for layer in self.layers)]
        x = self.model.model.embed_tokens(input_ids)
        shape = (B, self.n_kv, max_len, self.head_dim)
        self.k_cache = [x.new_zeros(shape) for _ in self.layers]
        self.v_cache = [x.new_zeros(shape) for _ in self.layers]
        self.key_valid = valid[:, None, None, :]
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        # a left-pad query row attends to itself only: never an all-masked row (NaN) in the cache
        mask = (causal & valid[:, None, None, :L]) | torch.eye(L, dtype=torch.bool, device=x.device)
        x = self._layers(x, positions, slice(0, L), mask)
        return self._logits(x[:, -1])

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slot: int) -> torch.Tensor:
        """One token per row (B,) at `positions` (B,), cached at `slot`; logits (B, V)."""
        x = self.model.model.embed_tokens(tokens[:, None])
        x = self._layers(x, positions[:, None], slice(slot, slot + 1), self.key_valid[..., : slot + 1])
        return self._logits(x[:, -1])

    def _layers(self, x: torch.Tensor, positions: torch.Tensor, slots: slice, mask: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        cos, sin = self.rotary(x, positions)  # (B, S, D), shared by every layer
        cos, sin = cos[:, None], sin[:, None]
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        for i, layer in enumerate(self.layers):
            w_qkv, w_gate_up = self.fused[i]
            attn = layer.self_attn
            h = F.rms_norm(x, (x.shape[-1],), layer.input_layernorm.weight, self.eps)
            qkv = F.linear(h, w_qkv).view(B, S, H + 2 * K, D).transpose(1, 2)  # (B, H + 2K, S, D)
            qk = qkv[:, : H + K]
            qk = qk * cos + _rotate_half(qk) * sin  # rotary on queries and keys at once
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + K :]
            self.k_cache[i][:, :, slots] = k
            self.v_cache[i][:, :, slots] = v
            keys, values = self.k_cache[i][:, :, : slots.stop], self.v_cache[i][:, :, : slots.stop]
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling, enable_gqa=K != H)
            x = x + F.linear(out.transpose(1, 2).reshape(B, S, -1), attn.o_proj.weight)
            h = F.rms_norm(x, (x.shape[-1],), layer.post_attention_layernorm.weight, self.eps)
            gate, up = F.linear(h, w_gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.mlp.down_proj.weight)
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.model.model.norm
        return F.linear(F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon), self.model.lm_head.weight)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
