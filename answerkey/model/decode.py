"""The torch engine's lean Llama forward: prefill and one-token-per-row decode over a KV cache of its own.

    decoder = LlamaDecoder.for_model(model)        # None when the model is not a plain Llama (`llama.py`)
    logits = decoder.prefill(input_ids, valid, positions, max_len, n=8, dtype=torch.bfloat16)  # (P * n, V)
    logits = decoder.step(tokens, positions, slot)  # (B, V): one new token per row, written at cache `slot`

Why: at rollout batch sizes a small model spends most of each decode step outside its matmuls: in
module calls, a causal mask and rotary table rebuilt every step, a cache `index_copy`, eager RMSNorm, and
SDPA's flash kernel, which is slow for one query per row on CPU. This path reads the parameters of the
Hugging Face module directly (a weight update by `rollout.weights.load_into` or an in-place optimizer step
is seen at the next call; the checksums the loop compares are of exactly these tensors) and, once per
`prefill`, takes a snapshot in the compute dtype: q|k|v and gate|up concatenated into one matrix each,
the attention scale folded into the query rows, on CPU prepacked for oneDNN (`onednn.prepacked`), cos/sin
tables for every position the call can reach. Prefill runs the prompts in row chunks of about
`PREFILL_TOKENS` tokens (a chunk's activations stay in cache), attending by two batched matmuls up to
`EXPLICIT_ATTENTION_MAX` positions and by SDPA's flash kernel beyond, where it wins. Per decode step and
layer it does: RMSNorm, one q/k/v matmul, rotary on queries and keys together (one roll and one fused
multiply-add), a slice write into a preallocated KV cache (left padding puts every row's new token in the
same slot; keys stored transposed), attention as two batched matmuls with an additive padding mask made
once per call (queries grouped per KV head, so GQA needs no repeated keys), and the MLP, each residual add
fused into its matmul (`addmm`).

Prompt sharing: `prefill` runs each distinct prompt once (GRPO's G completions per problem share it), so
prefill costs P prompts, not P * G; with n > 1 rows per prompt its keys and values are also cached once,
and each decode step reads them once per prompt for all n rows (`_attend_groups`), not once per row.

Precision: `prefill`'s `dtype` (default: the model's) is the dtype of the matmuls and the KV cache. With
bf16 over fp32 weights the weights are cast once per call, the residual stream and RMSNorm stay fp32, and
activations are cast to bf16 where they enter a matmul, as `torch.autocast` does in the learner.

Hugging Face's forward is the reference: this one equals it to float rounding in fp32
(tests/test_torch_engine.py compares the engine's processed logprobs with a full HF forward, and the
loop compares them with the learner's after every weight sync). Models it does not cover run HF's
forward in `TorchEngine`. It does not do continuous batching or paged attention (vLLM's job on GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from answerkey.model.llama import EXPLICIT_ATTENTION_MAX, is_plain_llama, rms_norm, rotary_tables, rotate
from answerkey.model.onednn import linear, prepacked

PREFILL_TOKENS = 1024  # prompt tokens per prefill chunk


@dataclass
class _Layer:
    """One decoder layer's weights for a call, fused and in the compute dtype (`LlamaDecoder._snapshot`)."""

    ln1: torch.Tensor
    qkv: torch.Tensor  # (H*D + 2*K*D, hidden), query rows scaled by the attention scale
    o: torch.Tensor
    ln2: torch.Tensor
    gate_up: torch.Tensor  # (2 * intermediate, hidden)
    down: torch.Tensor


class LlamaDecoder:
    """The cached forward of one plain Llama `model` (see the module docstring); holds one call's state."""

    def __init__(self, model):
        self.model = model
        cfg = model.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.layers: list[_Layer] = []
        self.n = 1  # rows per prompt of this call; > 1: prompt and completion KV cached apart
        self.k_cache: list[torch.Tensor] = []  # n == 1: (B, K, D, max_len); n > 1: (P, K, n, T, D)
        self.v_cache: list[torch.Tensor] = []  # n == 1: (B, K, max_len, D); n > 1: (P, K, n, T, D)
        self.k_prompt: list[torch.Tensor] = []  # (P, K, D, L), each prompt's keys once (n == 1: cache views)
        self.v_prompt: list[torch.Tensor] = []  # (P, K, L, D)
        self.mask: torch.Tensor | None = None  # (rows, 1, 1, slots) 0 where a slot holds a token, else -inf
        self.cos = self.sin = None  # (max_len, D) rotary tables
        self.prompt_len = 0
        self.dtype = torch.float32  # of this call's matmuls and cache

    @classmethod
    def for_model(cls, model) -> LlamaDecoder | None:
        """A decoder when every feature of the model is one this path implements, else None."""
        return cls(model) if is_plain_llama(model) else None

    def _snapshot(self, dtype: torch.dtype, rows: int) -> None:
        """The weights of this call in the compute dtype, fused (the weights cannot change during a call), and
        on CPU prepacked for oneDNN for a batch of `rows` (`onednn.prepacked`)."""
        m, qrows = self.model.model, self.n_heads * self.head_dim
        scale = self.model.model.layers[0].self_attn.scaling

        def pack(w: torch.Tensor) -> torch.Tensor:
            return prepacked(w, dtype, rows)

        self.layers = []
        for layer in m.layers:
            a, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([a.q_proj.weight * scale, a.k_proj.weight, a.v_proj.weight])
            assert qkv.shape[0] == qrows + 2 * self.n_kv * self.head_dim
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            self.layers.append(_Layer(layer.input_layernorm.weight, pack(qkv), pack(a.o_proj.weight),
                                      layer.post_attention_layernorm.weight, pack(gate_up),
                                      pack(mlp.down_proj.weight)))
        self.norm, self.head = m.norm.weight, pack(self.model.lm_head.weight)
        self.dtype = dtype

    def prefill(self, input_ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, max_len: int,
                n: int = 1, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Run P left-padded prompts once into the first L cache slots of their P * n rows; logits (P * n, V).

        Row r of the cache continues prompt r // n. valid: (P, max_len) bool, True for real prompt tokens and
        every generated slot; positions: (P, L); dtype: of the matmuls and the cache (default: the model's).
        The prompts run in row chunks of about `PREFILL_TOKENS` tokens, so that a chunk's activations stay in
        cache.
        """
        P, L = input_ids.shape
        emb = self.model.model.embed_tokens.weight
        dtype = dtype or emb.dtype
        self._snapshot(dtype, P * n)
        self.cos, self.sin = rotary_tables(self.model, max_len, emb.device, dtype)
        self.n, self.prompt_len = n, L
        self._allocate(P, L, max_len, emb, dtype)
        slots = valid if n == 1 else valid[:, :L]
        mask = torch.zeros(slots.shape, dtype=dtype, device=emb.device)
        self.mask = mask.masked_fill_(~slots, float("-inf"))[:, None, None]
        chunk = max(1, PREFILL_TOKENS // L)
        last = [self._prefill_rows(slice(r, r + chunk), input_ids, valid, positions)
                for r in range(0, P, chunk)]
        return self._logits(torch.cat(last)).repeat_interleave(n, dim=0)

    def _allocate(self, P: int, L: int, max_len: int, emb: torch.Tensor, dtype: torch.dtype) -> None:
        """The KV cache of a call: P prompts of L tokens, `self.n` rows each, `max_len` slots per row.

        Empty, not zeros: prefill writes slots 0..L-1 of every row and step t writes slot L+t before any read.
        Keys read by many queries are stored transposed (.., D, slots): q @ keys is then a plain batched
        matmul, which on CPU is faster than one over a transposed view. With n > 1 the completions' own keys
        are read by one query row each, and a step's write into a transposed cache would scatter one float per
        cache line: those are stored (.., slots, D).
        """
        K, D, n, T = self.n_kv, self.head_dim, self.n, max_len - L
        new = lambda *shape: emb.new_empty(shape, dtype=dtype)  # noqa: E731
        if n == 1:
            self.k_cache = [new(P, K, D, max_len) for _ in self.layers]
            self.v_cache = [new(P, K, max_len, D) for _ in self.layers]
            self.k_prompt = [c[..., :L] for c in self.k_cache]
            self.v_prompt = [c[:, :, :L] for c in self.v_cache]
        else:
            self.k_cache = [new(P, K, n, T, D) for _ in self.layers]
            self.v_cache = [new(P, K, n, T, D) for _ in self.layers]
            self.k_prompt = [new(P, K, D, L) for _ in self.layers]
            self.v_prompt = [new(P, K, L, D) for _ in self.layers]

    def _prefill_rows(self, rows: slice, input_ids: torch.Tensor, valid: torch.Tensor,
                      positions: torch.Tensor) -> torch.Tensor:
        """Prompts `rows` through every layer, their keys and values written to the prompt cache; the last
        hidden state of each (c, d)."""
        ids, dtype = input_ids[rows], self.dtype
        c, L = ids.shape
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        x = F.embedding(ids, self.model.model.embed_tokens.weight)  # (c, L, hidden), the parameters' dtype
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        # a left-pad query row attends to itself only: never an all-masked row (NaN) in the cache
        allowed = (causal & valid[rows, None, None, :L]) | torch.eye(L, dtype=torch.bool, device=x.device)
        short, mask = L <= EXPLICIT_ATTENTION_MAX, allowed  # (c, 1, L, L)
        if short:  # additive, (c, 1, 1, L, L) against scores (c, K, H/K, L, L)
            mask = torch.zeros(allowed.shape, dtype=dtype, device=x.device)
            mask = mask.masked_fill_(~allowed, float("-inf"))[:, :, None]
        cos, sin = self.cos[positions[rows]][:, None], self.sin[positions[rows]][:, None]  # (c, 1, L, D)
        for i, w in enumerate(self.layers):
            qkv = linear(rms_norm(x, w.ln1, self.eps).to(dtype), w.qkv).view(c, L, H + 2 * K, D)
            qkv = qkv.transpose(1, 2).contiguous()  # (c, heads, L, D): one copy, then each head is contiguous
            qk = rotate(qkv[:, : H + K], cos, sin)  # (c, H + K, L, D)
            keys, values = self.k_prompt[i][rows], self.v_prompt[i][rows]  # cache views (c,K,D,L), (c,K,L,D)
            keys.copy_(qk[:, H:].transpose(-1, -2))
            values.copy_(qkv[:, H + K :])
            q = qk[:, :H]  # (c, H, L, D)
            if short:  # two batched matmuls: for short prompts faster than SDPA's flash kernel on CPU
                scores = torch.matmul(q.view(c, K, -1, D), keys).view(c, K, H // K, L, L).add_(mask)
                probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype).view(c, K, -1, L)
                out = torch.matmul(probs, values).view(c, H, L, D)
            else:
                out = F.scaled_dot_product_attention(q, keys.transpose(-1, -2), values, attn_mask=mask,
                                                     scale=1.0, enable_gqa=K != H)
            x = linear(out.transpose(1, 2).reshape(c, L, H * D), w.o, residual=x)
            x = self._mlp(x, w, dtype)
        return x[:, -1]

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slot: int) -> torch.Tensor:
        """One token per row (B,) at `positions` (B,), cached at `slot`; logits (B, V)."""
        x = F.embedding(tokens, self.model.model.embed_tokens.weight)  # (B, hidden)
        B, dtype = x.shape[0], self.dtype
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, D)
        attend = self._attend_rows if self.n == 1 else self._attend_groups
        for i, w in enumerate(self.layers):
            qkv = linear(rms_norm(x, w.ln1, self.eps).to(dtype), w.qkv).view(B, H + 2 * K, D)
            qk = rotate(qkv[:, : H + K], cos, sin)  # (B, H + K, D)
            out = attend(i, qk[:, :H], qk[:, H:], qkv[:, H + K :], slot)  # (B, H * D)
            x = self._mlp(linear(out, w.o, residual=x), w, dtype)
        return self._logits(x)

    def _attend_rows(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     slot: int) -> torch.Tensor:
        """One query per row over its own cache (n = 1). q (B, H, D), k and v (B, K, D) -> (B, H * D)."""
        B, H, D = q.shape
        K, S = k.shape[1], slot + 1
        self.k_cache[i][..., slot] = k
        self.v_cache[i][:, :, slot] = v
        scores = torch.matmul(q.view(B, K, H // K, D), self.k_cache[i][..., :S])  # (B, K, H/K, S)
        scores = scores.add_(self.mask[..., :S])
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, self.v_cache[i][:, :, :S]).view(B, H * D)

    def _attend_groups(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       slot: int) -> torch.Tensor:
        """n > 1 rows per prompt: the prompt's keys and values are read once for its n rows (one matmul with
        n x H/K queries per KV head), the completion's per row; one softmax over both parts."""
        B, H, D = q.shape
        P, K, n = self.k_cache[i].shape[:3]
        t, L = slot - self.prompt_len + 1, self.prompt_len  # completion slots so far, prompt slots
        self.k_cache[i][..., t - 1, :] = k.view(P, n, K, D).transpose(1, 2)
        self.v_cache[i][..., t - 1, :] = v.view(P, n, K, D).transpose(1, 2)
        q = q.view(P, n, K, H // K, D).transpose(1, 2).contiguous()  # (P, K, n, H/K, D)
        prompt = torch.matmul(q.view(P, K, -1, D), self.k_prompt[i]).add_(self.mask).view(P, K, n, -1, L)
        own = torch.matmul(q, self.k_cache[i][..., :t, :].transpose(-1, -2))  # (P, K, n, H/K, t)
        probs = torch.softmax(torch.cat([prompt, own], dim=-1), dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs[..., :L].reshape(P, K, -1, L), self.v_prompt[i]).view(q.shape)
        out = out + torch.matmul(probs[..., L:], self.v_cache[i][..., :t, :])  # (P, K, n, H/K, D)
        return out.transpose(1, 2).reshape(B, H * D)

    def _mlp(self, x: torch.Tensor, w: _Layer, dtype: torch.dtype) -> torch.Tensor:
        """x + SwiGLU MLP of RMSNorm(x), the residual add fused into the last GEMM where the dtypes allow."""
        gate, up = linear(rms_norm(x, w.ln2, self.eps).to(dtype), w.gate_up).chunk(2, dim=-1)
        return linear(F.silu(gate).mul_(up), w.down, residual=x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return linear(rms_norm(x, self.norm, self.eps).to(self.dtype), self.head)
