"""The one model module: Llama presets, and the lean Llama forward that the rollout engine, the learner and
pretraining share.

    model = build_model("tiny", vocab_size=len(tokenizer), stop_ids=chat.stop_token_ids(tokenizer))
    decoder = LlamaDecoder.for_model(model)    # the engine's cached decode (None: not a plain Llama)
    logprobs, entropy = completion_logprobs(model, prompts, valid, index, completions)   # the learner's
    loss = nll_sum(forward_logits(model, ids), ids[:, 1:], mask)            # pretraining and SFT

Files, by what they are:

- `presets.py`: `PRESETS`, `build_model`, `num_parameters` (Hugging Face `LlamaForCausalLM`s).
- `llama.py`: what both lean forwards share: `is_plain_llama` (which models they cover), RMSNorm, rotary.
- `decode.py`: `LlamaDecoder`, the torch engine's prefill and one-token-per-row decode over a KV cache.
- `completion.py`: `completion_logprobs`, the learner's forward over shared prompts and their completions
  (logits made a chunk of tokens at a time; `completion_logits` makes them all at once).
- `loss.py`: `forward_logits` and `nll_sum`, the next-token loss of pretraining and SFT.
- `onednn.py`: the optional CPU fast path (oneDNN GEMMs, prepacked weights, glibc keeping freed memory).

Hugging Face's forward is the reference implementation: the lean forwards read the HF module's own
parameters, cover only plain Llama models (anything else runs HF's forward), and are pinned to it by
tests/test_torch_engine.py (engine logprobs against a full HF forward), tests/test_lean_forward.py
(the learner's logprobs and gradients against HF's, oneDNN `linear` against `F.linear`) and
tests/test_prompt_sharing.py (shared prompts against one forward per row, in fp64).
"""

from answerkey.model.completion import completion_logits, completion_logprobs
from answerkey.model.decode import LlamaDecoder
from answerkey.model.llama import is_plain_llama
from answerkey.model.loss import forward_logits, nll_sum
from answerkey.model.onednn import keep_freed_memory
from answerkey.model.presets import PRESETS, build_model, num_parameters

__all__ = ["PRESETS", "LlamaDecoder", "build_model", "completion_logits", "completion_logprobs",
           "forward_logits", "is_plain_llama", "keep_freed_memory", "nll_sum", "num_parameters"]
