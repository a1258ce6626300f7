"""Weight transfer: the gloo broadcast from a learner actor to two rollout-worker actors, checked by the
workers' own checksums; a tensor altered in flight is caught; the vLLM fused/padded checksum mapping.

Ray is the session's local head (conftest `ray_session`); the learner and workers are the real
`PretrainedLearner` and `RolloutWorker` classes in actors, as the driver starts them.
"""

from __future__ import annotations

import pytest
import ray
import torch

from answerkey import chat
from answerkey.config import LearnerConfig
from answerkey.learner.learner import PretrainedLearner
from answerkey.rollout import transfer
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.transfer import (
    BroadcastTransport,
    Entry,
    bucket_plan,
    engine_checksums,
    expected_checksums,
)
from answerkey.rollout.worker import RolloutWorker


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tokenizer):
    """Two checkpoints of the same tiny Llama with different weights: the learner's and the workers' start."""
    from answerkey.pretrain.model import build_model

    paths = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"model{seed}")
        build_model("tiny", len(tokenizer), chat.stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id, seed=seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def actors(ray_session, two_models):
    learner = ray.remote(num_cpus=0)(PretrainedLearner).remote(two_models[0], LearnerConfig(), SamplingParams(), 1, threads=1)
    workers = {i: ray.remote(num_cpus=0)(RolloutWorker).remote(two_models[1], seed=i, threads=1) for i in range(2)}
    yield learner, workers
    for actor in [learner, *workers.values()]:
        ray.kill(actor, no_restart=True)


def _send_altered(learner, version: int) -> int:
    """Runs in the learner actor: broadcast its weights with one element of the first tensor changed."""
    named = [(n, p.detach().clone()) for n, p in learner.model.named_parameters()]
    named[0][1].view(-1)[0] += 1e-3
    return learner.weight_group.send(named, version)


def test_gloo_broadcast_syncs_two_workers_and_checksums_agree(actors):
    learner, workers = actors
    expected = ray.get(learner.weights_checksum.remote())
    before = ray.get(workers[0].__ray_call__.remote(lambda w: w.engine.weights_checksum()))
    assert before.keys() == expected.keys() and before != expected  # the workers start from other weights
    transport = BroadcastTransport(learner, "gloo", timeout_s=60)
    for version in (1, 2):  # the second push reuses the group
        held = ray.get(list(transport.push(workers, version).values()))
        assert held == [expected, expected]
        assert ray.get(transport.sending) > 0
    assert ray.get(workers[1].__ray_call__.remote(lambda w: w.engine.version)) == 2
    # one altered element on the wire: the workers' checksums, computed from what they hold, expose it
    refs = [w.__ray_call__.remote(transfer._worker_receive) for w in workers.values()]
    ray.get(learner.__ray_call__.remote(_send_altered, 3))
    for held in ray.get(refs):
        wrong = [name for name in expected if held[name] != expected[name]]
        assert wrong == [next(iter(expected))]


def test_bf16_on_the_wire_matches_the_learners_bf16_checksums(actors):
    """A bf16 broadcast into fp32 engines: they hold the bf16 values, i.e. expected_checksums(model, bf16)."""
    learner, workers = actors
    transport = BroadcastTransport(learner, "gloo", timeout_s=60)
    transport.push(workers, 1)  # forms the group (and syncs fp32)
    ray.get(transport.sending)
    refs = [w.__ray_call__.remote(transfer._worker_receive) for w in workers.values()]
    ray.get(learner.__ray_call__.remote(lambda lr: lr.weight_group.send(lr.model.named_parameters(), 2, dtype=torch.bfloat16)))
    want = ray.get(learner.__ray_call__.remote(lambda lr: expected_checksums(lr.model, torch.bfloat16)))
    assert ray.get(refs) == [want, want]
    assert want != ray.get(learner.weights_checksum.remote())  # bf16 really rounded something


def test_hf_views_map_fused_and_padded_vllm_parameters(make_model):
    """A vLLM-style parameter set (qkv and gate/up fused, vocab padded to 64) checksums like the HF model."""
    model = make_model(seed=3)
    params = dict(model.named_parameters())
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    vllm: list[tuple[str, torch.Tensor]] = []
    for name, p in params.items():
        if ".q_proj." in name:
            parts = [params[name.replace("q_proj", x)] for x in ("q_proj", "k_proj", "v_proj")]
            vllm.append((name.replace("q_proj", "qkv_proj"), torch.cat(parts)))
        elif ".gate_proj." in name:
            vllm.append((name.replace("gate_proj", "gate_up_proj"), torch.cat([p, params[name.replace("gate_proj", "up_proj")]])))
        elif "embed_tokens" in name:
            padded = -(-p.shape[0] // 64) * 64
            vllm.append((name, torch.cat([p, torch.zeros(padded - p.shape[0], p.shape[1])])))
        elif not any(x in name for x in ("k_proj", "v_proj", "up_proj")):
            vllm.append((name, p))
    assert any("qkv_proj" in n for n, _ in vllm) and len(vllm) < len(params)
    assert engine_checksums(vllm, shapes) == expected_checksums(model)
    swapped = [(n, torch.cat([t[t.shape[0] // 2:], t[: t.shape[0] // 2]]) if "gate_up" in n else t) for n, t in vllm]
    wrong = {n for n, c in engine_checksums(swapped, shapes).items() if c != expected_checksums(model)[n]}
    assert wrong and all(("gate_proj" in n or "up_proj" in n) for n in wrong)
    with pytest.raises(ValueError, match="qkv_proj.*rows"):
        engine_checksums([(n, t[:-1]) if "qkv" in n else (n, t) for n, t in vllm], shapes)


@pytest.mark.parametrize(("sizes", "dtypes", "limit", "want"), [
    ([4, 4, 4], ["float32"] * 3, 32, [[0, 1], [2]]),          # 16 B each: two fit in 32 B
    ([4, 4, 4], ["float32", "bfloat16", "bfloat16"], 1024, [[0], [1, 2]]),  # a dtype change starts a bucket
    ([100, 1], ["float32"] * 2, 16, [[0], [1]]),             # larger than a bucket: alone
])
def test_bucket_plan(sizes, dtypes, limit, want):
    entries = [Entry(f"p{i}", (n,), d) for i, (n, d) in enumerate(zip(sizes, dtypes, strict=True))]
    assert [[int(e.name[1:]) for e in b] for b in bucket_plan(entries, limit)] == want


def test_make_transport_names_the_choices():
    with pytest.raises(ValueError, match="object_store"):
        transfer.make_transport("carrier_pigeon", learner=None)
