"""The torch rollout engine against full forward passes and HF `generate` (the reference)."""

import numpy as np
import pytest
import torch

from answerkey import chat
from answerkey.rollout import sampling as S
from answerkey.rollout import weights
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine, cache_keyword

PROMPTS = ["What is 2 + 3?",
           "Emily buys 3 apples and 2 oranges. Each orange costs $2 and the total is $13.", "Hi"]


def prompts(tokenizer):
    ids = [chat.prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
    assert len({len(i) for i in ids}) == len(ids)  # different lengths: left padding is exercised
    return ids


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(max_new_tokens=24, temperature=1.0),
        SamplingParams(max_new_tokens=24, temperature=0.7, top_k=20),
        SamplingParams(max_new_tokens=24, temperature=1.3, top_p=0.8),
        SamplingParams(max_new_tokens=24, temperature=0.8, top_k=50, top_p=0.9),
    ],
)
def test_sampled_logprobs_match_a_full_forward_pass(tokenizer, make_model, sampling):
    model = make_model()
    engine = TorchEngine(model, tokenizer, seed=3)
    batch = prompts(tokenizer)
    groups = engine.generate(batch, n=4, sampling=sampling)
    assert [len(g) for g in groups] == [4, 4, 4]
    checked = 0
    for prompt, group in zip(batch, groups, strict=True):
        for c in group:
            assert len(c.logprobs) == len(c.token_ids) > 0
            ids = torch.tensor([prompt + c.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt) - 1 : -1]
            expected = S.gather(S.processed_logprobs(logits, sampling.temperature, sampling.top_k,
                                                     sampling.top_p), ids[0, len(prompt):])
            assert torch.isfinite(expected).all()
            np.testing.assert_allclose(c.logprobs, expected.numpy(), atol=1e-4)
            checked += len(c.token_ids)
    assert checked > 100


def test_greedy_matches_hf_generate_for_each_prompt_alone(tokenizer, make_model):
    model = make_model(seed=1)
    engine = TorchEngine(model, tokenizer)
    batch = prompts(tokenizer)
    greedy = SamplingParams(max_new_tokens=20, top_k=1)
    ours = engine.generate(batch, n=2, sampling=greedy)
    for prompt, group in zip(batch, ours, strict=True):
        ref = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20,
                             eos_token_id=engine.stop_ids, pad_token_id=tokenizer.pad_token_id)
        assert group[0].token_ids == ref[0, len(prompt):].tolist()
        assert group[1].token_ids == group[0].token_ids


def test_stops_on_im_end_and_reports_length_otherwise(tokenizer, make_model):
    model = make_model()
    im_end = tokenizer.convert_tokens_to_ids(chat.IM_END)
    with torch.no_grad():  # make <|im_end|> the likeliest next token everywhere
        model.lm_head.weight[im_end] = model.lm_head.weight[im_end] * 0 + 0.5
        model.model.norm.weight.fill_(1.0)
    engine = TorchEngine(model, tokenizer)
    batch = prompts(tokenizer)
    stopped = engine.generate(batch, 1, SamplingParams(max_new_tokens=8, top_k=1))
    assert all(g[0].token_ids == [im_end] and g[0].finish_reason == "stop" and g[0].text == ""
               for g in stopped)
    forced = engine.generate(batch, 1, SamplingParams(max_new_tokens=8, top_k=1, ignore_eos=True))
    assert all(len(g[0].token_ids) == 8 and g[0].finish_reason == "length" for g in forced)


def test_stop_strings_end_the_completion_and_cut_the_text(tokenizer, make_model):
    engine = TorchEngine(make_model(seed=2), tokenizer, seed=0)
    batch = prompts(tokenizer)
    free = engine.generate(batch, 1, SamplingParams(max_new_tokens=16, top_k=1, ignore_eos=True))
    text = free[0][0].text
    stop = text[4:6]  # a string the greedy completion is known to produce
    cut = engine.generate(batch[:1], 1,
                          SamplingParams(max_new_tokens=16, top_k=1, ignore_eos=True, stop=(stop,)))[0][0]
    assert cut.finish_reason == "stop" and stop not in cut.text and text.startswith(cut.text)
    assert len(cut.token_ids) < 16 and free[0][0].token_ids[: len(cut.token_ids)] == cut.token_ids


def test_same_seed_same_samples(tokenizer, make_model):
    engine = TorchEngine(make_model(), tokenizer)
    sampling = SamplingParams(max_new_tokens=12, seed=123)
    a = engine.generate(prompts(tokenizer), 3, sampling)
    b = engine.generate(prompts(tokenizer), 3, sampling)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    assert len({tuple(c.token_ids) for c in a[0]}) > 1  # the G completions of a group differ


def test_weight_update_changes_what_it_generates_with_and_checksums_agree(tokenizer, make_model):
    source, target = make_model(seed=1), make_model(seed=2)
    engine = TorchEngine(target, tokenizer)
    assert engine.weights_checksum() != weights.checksums(source)
    engine.begin_weight_update()
    pairs = weights.named_arrays(source)
    engine.update_weights(pairs[:3])
    engine.update_weights(pairs[3:])  # streamed in several calls
    engine.finish_weight_update(version=7)
    assert engine.version == 7 and engine.weights_checksum() == weights.checksums(source)
    greedy = SamplingParams(max_new_tokens=10, top_k=1)
    want = TorchEngine(source, tokenizer).generate(prompts(tokenizer), 1, greedy)
    assert engine.generate(prompts(tokenizer), 1, greedy) == want


def test_partial_or_malformed_weight_updates_fail_loudly(tokenizer, make_model):
    engine = TorchEngine(make_model(), tokenizer)
    pairs = weights.named_arrays(make_model(seed=5))
    engine.begin_weight_update()
    engine.update_weights(pairs[:-1])
    with pytest.raises(RuntimeError, match="left 1 parameter"):
        engine.finish_weight_update(1)
    engine.begin_weight_update()
    with pytest.raises(KeyError, match="does not have"):
        engine.update_weights([("model.nope.weight", pairs[0][1])])
    with pytest.raises(ValueError, match=f"{pairs[0][0]}.*shape"):
        engine.update_weights([(pairs[0][0], pairs[0][1][:1])])
    with pytest.raises(RuntimeError, match="without begin"):
        TorchEngine(make_model(), tokenizer).update_weights(pairs)


def test_sleep_refuses_generation_until_wake(tokenizer, make_model):
    engine = TorchEngine(make_model(), tokenizer)
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(prompts(tokenizer), 1, SamplingParams(max_new_tokens=2))
    engine.wake()
    engine.reset_prefix_cache()
    assert len(engine.generate(prompts(tokenizer), 1, SamplingParams(max_new_tokens=2))) == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_bad_sampling_params_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_prompt_too_long_for_the_model(tokenizer, make_model):
    engine = TorchEngine(make_model(), tokenizer)
    with pytest.raises(ValueError, match="exceeds the model's 1024 positions"):
        engine.generate([[5] * 1020], 1, SamplingParams(max_new_tokens=10))


@pytest.mark.parametrize("preset", ["tiny", "1.4m"])  # tiny has grouped-query attention (4 heads, 2 kv heads)
def test_the_lean_llama_path_equals_the_hf_forward(tokenizer, make_model, preset):
    ids = prompts(tokenizer)
    model = make_model(seed=3, preset=preset)
    lean, plain = TorchEngine(model, tokenizer, seed=5), TorchEngine(model, tokenizer, seed=5, lean=False)
    assert lean.decoder is not None and plain.decoder is None
    greedy = SamplingParams(max_new_tokens=12, top_k=1, ignore_eos=True)
    a, b = lean.generate(ids, 1, greedy), plain.generate(ids, 1, greedy)
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
    sampling = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9)
    for prompt in ids:
        completion = lean.generate([prompt], 1, sampling)[0][0].token_ids
        x, y = lean.logprobs_of(prompt, completion, sampling), plain.logprobs_of(prompt, completion, sampling)
        assert max(abs(u - v) for u, v in zip(x, y, strict=True)) < 1e-5



class _Forward(torch.nn.Module):
    def __init__(self, forward):
        super().__init__()
        self.forward = forward


@pytest.mark.parametrize("forward, expected", [
    (lambda input_ids, cache=None, use_cache=None, **kwargs: None, "cache"),  # transformers >= 5.24
    (lambda input_ids, past_key_values=None, use_cache=None, **kwargs: None, "past_key_values"),  # < 5.24
    (lambda *args, **kwargs: None, TypeError),  # a wrapper: a misspelt name would vanish into **kwargs
    (lambda input_ids, **cache: None, TypeError),
])
def test_cache_keyword_reads_the_forwards_signature(forward, expected):
    if expected is TypeError:
        with pytest.raises(TypeError, match="neither `cache` nor `past_key_values`"):
            cache_keyword(_Forward(forward))
    else:
        assert cache_keyword(_Forward(forward)) == expected


def test_cache_keyword_of_the_installed_transformers_is_a_named_parameter(make_model):
    """Whichever transformers is installed (5.16.1-5.2x), the HF Llama forward names the keyword chosen."""
    import inspect

    import transformers

    model = make_model()
    name = cache_keyword(model)
    assert name in inspect.signature(model.forward).parameters
    major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    assert name == ("cache" if major_minor >= (5, 24) else "past_key_values")

def test_the_lean_path_sees_weight_changes_between_calls(tokenizer, make_model):
    ids = prompts(tokenizer)
    model = make_model(seed=3)
    engine = TorchEngine(model, tokenizer, seed=5)
    plain = SamplingParams(max_new_tokens=8)
    before = engine.logprobs_of(ids[0], [5, 6, 7], plain)
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.mul_(1.5)  # in place, as an optimizer step would
        model.model.layers[1].mlp.up_proj.weight.add_(0.01)
    after = engine.logprobs_of(ids[0], [5, 6, 7], plain)
    reference = TorchEngine(model, tokenizer, lean=False).logprobs_of(ids[0], [5, 6, 7], plain)
    assert before != after and max(abs(u - v) for u, v in zip(after, reference, strict=True)) < 1e-5


@pytest.mark.parametrize("chunk_tokens, explicit_max", [(10**6, 10**6), (40, 10**6), (40, 8)])
def test_prefill_chunks_and_both_attention_paths_equal_the_hf_forward(tokenizer, make_model, monkeypatch,
                                                                       chunk_tokens, explicit_max):
    """Prompts run in row chunks of about PREFILL_TOKENS tokens; prompts longer than
    EXPLICIT_ATTENTION_MAX attend by SDPA, shorter ones by two matmuls. Every combination gives the HF
    forward's logprobs, for n = 1 and n > 1."""
    from answerkey.model import decode

    monkeypatch.setattr(decode, "PREFILL_TOKENS", chunk_tokens)
    monkeypatch.setattr(decode, "EXPLICIT_ATTENTION_MAX", explicit_max)
    ids = prompts(tokenizer) * 3  # 9 prompts of up to ~30 tokens: 40 tokens per chunk is one prompt per chunk
    model = make_model(seed=3, preset="tiny")
    sampling = SamplingParams(max_new_tokens=10, temperature=1.0, ignore_eos=True)
    for n in (1, 3):
        groups = TorchEngine(model, tokenizer, seed=1).generate(ids, n, sampling)
        for prompt, group in zip(ids, groups, strict=True):
            for c in group:
                seq = torch.tensor([prompt + c.token_ids])
                with torch.no_grad():
                    logits = model(seq).logits[0, len(prompt) - 1 : -1]
                expected = S.gather(S.processed_logprobs(logits), seq[0, len(prompt):])
                np.testing.assert_allclose(c.logprobs, expected.numpy(), atol=1e-4)
