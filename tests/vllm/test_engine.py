"""VLLMEngine on vLLM's CPU build: sampling, processed logprobs equal to the learner's, seeds, weight updates
(in-process and through vLLM's own engine process, where arguments are msgpack-encoded), and the start-up
errors a user gets for what vLLM cannot serve."""

from __future__ import annotations

import datetime
import json
import shutil
import socket
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from answerkey.config import LearnerConfig
from answerkey.learner import Learner
from answerkey.loop import prompts_for
from answerkey.rollout import transfer, weights
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.vllm_engine import EngineUnavailable, VLLMEngine, check_servable, layer_buckets

SAMPLINGS = [SamplingParams(max_new_tokens=24),
             SamplingParams(max_new_tokens=24, temperature=0.7, top_k=20, top_p=0.9)]


@pytest.fixture(scope="module")
def engine(vllm_policy_dir):
    return VLLMEngine(str(vllm_policy_dir), seed=0, threads=2)  # in-process: the default on CPU


@pytest.fixture(scope="module")
def prompts(vllm_policy_dir, synthetic_env):
    tokenizer = AutoTokenizer.from_pretrained(vllm_policy_dir)
    return prompts_for(tokenizer, list(synthetic_env.problems("train"))[:6])


def learner_for(path, sampling: SamplingParams) -> Learner:
    return Learner(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), LearnerConfig(), sampling,
                   total_steps=1)


def max_gap(learner: Learner, prompts, groups) -> float:
    gaps = [abs(a - b) for p, g in zip(prompts, groups, strict=True) for c in g
            for a, b in zip(c.logprobs, learner.logprobs_of(p, c.token_ids), strict=True)]
    return max(gaps)


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["plain", "t0.7-k20-p0.9"])
def test_generate_n_per_prompt_with_processed_logprobs_equal_to_the_learners(engine, prompts, sampling,
                                                                              vllm_policy_dir):
    groups = engine.generate(prompts, 4, sampling)
    assert [len(g) for g in groups] == [4] * len(prompts)
    completions = [c for g in groups for c in g]
    assert all(c.finish_reason in ("stop", "length") and len(c.logprobs) == len(c.token_ids)
               for c in completions)
    assert any(c.finish_reason == "stop" for c in completions) and any(c.text for c in completions)
    assert len({tuple(c.token_ids) for c in groups[0]}) > 1, "the n samples of a prompt are all the same"
    assert max_gap(learner_for(vllm_policy_dir, sampling), prompts, groups) < 1e-4


def test_seeds_make_sampling_reproducible_and_the_rng_state_replays_it(engine, prompts):
    sampling = SamplingParams(max_new_tokens=16)
    seeded = [engine.generate(prompts, 2, SamplingParams(max_new_tokens=16, seed=7)) for _ in range(2)]
    assert ids(seeded[0]) == ids(seeded[1])
    state = engine.generator.get_state()
    first = engine.generate(prompts, 2, sampling)
    assert ids(engine.generate(prompts, 2, sampling)) != ids(first)  # the stream moves on
    engine.generator.set_state(state)
    assert ids(engine.generate(prompts, 2, sampling)) == ids(first)
    probe = SamplingParams(max_new_tokens=16, seed=3)
    state = engine.generator.get_state()
    assert engine.probe(prompts[0], probe).token_ids == engine.probe(prompts[0], probe).token_ids
    assert torch.equal(engine.generator.get_state(), state), "a probe moved the engine's stream"


def ids(groups) -> list:
    return [[c.token_ids for c in g] for g in groups]


def perturbed(path, seed: int) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return model


def test_a_weight_update_is_verified_by_checksums_and_logprobs(engine, prompts, vllm_policy_dir):
    original = AutoModelForCausalLM.from_pretrained(vllm_policy_dir, dtype=torch.float32)
    assert engine.weights_checksum() == weights.checksums(original)
    model = perturbed(vllm_policy_dir, 1)
    engine.begin_weight_update()
    engine.update_weights(weights.named_arrays(model))
    engine.finish_weight_update(1)
    engine.reset_prefix_cache()
    assert engine.weights_checksum() == weights.checksums(model)
    sampling = SAMPLINGS[1]
    learner = Learner(model, LearnerConfig(), sampling, total_steps=1)
    assert max_gap(learner, prompts, engine.generate(prompts, 2, sampling)) < 1e-4
    # an update in small buckets (split only between layers) holds the same weights as one call
    buckets = list(layer_buckets(weights.named_arrays(original), 1))
    layers = [{n.split(".")[2] for n, _ in bucket if ".layers." in n} for bucket in buckets]
    assert len(buckets) > 3 and all(len(names) <= 1 for names in layers)
    engine.begin_weight_update()
    for bucket in buckets:
        engine.update_weights(bucket)
    engine.finish_weight_update(2)
    assert engine.weights_checksum() == weights.checksums(original)


def test_an_update_that_skips_a_parameter_is_refused_naming_it(engine, vllm_policy_dir):
    pairs = weights.named_arrays(AutoModelForCausalLM.from_pretrained(vllm_policy_dir, dtype=torch.float32))
    engine.begin_weight_update()
    engine.update_weights(pairs[:3] + pairs[4:])
    with pytest.raises(RuntimeError, match=rf"left 1 parameter\(s\) unchanged, e.g. \['{pairs[3][0]}'\]"):
        engine.finish_weight_update(3)


def test_vllms_own_engine_process_takes_updates_as_bytes_and_by_gloo_broadcast(vllm_policy_dir, prompts):
    """Default (GPU) mode: vLLM's engine and worker in their own processes, arguments msgpack-encoded."""
    engine = VLLMEngine(str(vllm_policy_dir), seed=0, in_process=False)
    try:
        model = perturbed(vllm_policy_dir, 2)
        engine.begin_weight_update()
        engine.update_weights(weights.named_arrays(model))
        engine.finish_weight_update(1)
        assert engine.weights_checksum() == weights.checksums(model)

        # the broadcast: this process is the learner (rank 0), vLLM's worker process rank 1
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        store = torch.distributed.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False,
                                           timeout=datetime.timedelta(seconds=60))
        spec = transfer.GroupSpec("127.0.0.1", port, 2, "gloo", 60.0)
        joined = threading.Thread(target=engine.join_weight_group, args=(spec, 1))
        joined.start()
        sender = transfer.BroadcastGroup(spec, 0)
        joined.join()
        other = perturbed(vllm_policy_dir, 3)
        sent = threading.Thread(target=sender.send, args=(other.named_parameters(), 4))
        sent.start()
        engine.begin_weight_update()
        engine.finish_weight_update(engine.receive_weights())
        sent.join()
        assert engine.version == 4 and engine.weights_checksum() == weights.checksums(other)
        engine.reset_prefix_cache()
        sampling = SAMPLINGS[0]
        learner = Learner(other, LearnerConfig(), sampling, total_steps=1)
        assert max_gap(learner, prompts[:2], engine.generate(prompts[:2], 2, sampling)) < 1e-4
        del store
    finally:
        engine.close()


# -- what vLLM cannot serve: a clear error at start-up, naming rollout.engine -----------------------------


def test_a_head_size_without_a_cpu_kernel_is_refused(policy_dir):
    with pytest.raises(EngineUnavailable, match=r"rollout.engine = 'vllm'.*head size 16"):
        check_servable(str(policy_dir))


def test_an_architecture_vllm_cannot_serve_is_refused(vllm_policy_dir, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(vllm_policy_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"architectures": ["NoSuchForCausalLM"]}))
    with pytest.raises(EngineUnavailable, match=r"'vllm'.*cannot serve \['NoSuchForCausalLM'\]"):
        check_servable(str(path))


def test_bf16_on_cpu_is_refused(vllm_policy_dir):
    with pytest.raises(EngineUnavailable, match=r"fp32 only \(rollout.precision = 'fp32'\)"):
        check_servable(str(vllm_policy_dir), "bf16")
