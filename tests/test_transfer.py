"""Weight transfer: the gloo broadcast from a learner actor to two rollout-worker actors, checked by the
workers' own checksums; a tensor altered in flight is caught; the vLLM fused/padded checksum mapping.

Ray is the session's local head (conftest `ray_session`); the learner and workers are the driver's own
actors (`rollout.transport = "gloo"`), so the driver's checksum verification is the one exercised.
"""

from __future__ import annotations

import pytest
import ray
import torch

from answerkey import driver as rl_driver
from answerkey.config import load_config
from answerkey.rollout import transfer, weights
from answerkey.rollout.transfer import (
    Entry,
    bucket_plan,
    engine_checksums,
)
from answerkey.rundir import RunDir


@pytest.fixture(scope="module")
def driver(ray_session, policy_dir, tmp_path_factory):
    """A driver whose learner and 2 workers sync over the gloo broadcast (starting actors is the slow
    part)."""
    cfg = load_config("examples/tiny_cpu.toml", [
        f"--model.path={policy_dir}", f"--run.out_dir={tmp_path_factory.mktemp('runs')}", "--run.name=gloo",
        "--rollout.transport=gloo", "--rollout.problems_per_step=4", "--rollout.group_size=4",
        "--run.steps=2"])
    driver = rl_driver.start(cfg, RunDir.create(cfg))  # its first sync (version 0) is already verified
    yield driver
    driver.close()


def _send_altered(learner, version: int) -> int:
    """Runs in the learner actor: broadcast its weights with one element of the first tensor changed."""
    named = [(n, p.detach().clone()) for n, p in learner.model.named_parameters()]
    named[0][1].view(-1)[0] += 1e-3
    return learner.weight_group.send(named, version)


def held(worker) -> dict[str, str]:
    return ray.get(worker.__ray_call__.remote(lambda w: w.engine.weights_checksum()))


def test_gloo_broadcast_syncs_learner_to_two_workers_through_steps_and_a_restart(driver):
    before = ray.get(driver.learner.weights_checksum.remote())
    for _ in range(2):  # learn, then broadcast over the same group
        metrics = driver.train_step()
        assert metrics["sync/verified"] == 1.0 and metrics["sync/version"] == driver.step
    expected = ray.get(driver.learner.weights_checksum.remote())
    assert expected != before, "the learner did not move, so the sync proved nothing"
    assert [held(w) for w in driver.workers] == [expected, expected]
    ray.kill(driver.workers[0], no_restart=True)
    driver.restart_worker(0)  # a fresh worker joins a new group with the learner, loads and is verified
    assert held(driver.workers[0]) == expected
    assert driver.sync()["sync/verified"] == 1.0  # and the full group is re-formed for the next sync


def test_a_tensor_altered_on_the_wire_fails_the_workers_checksums(driver):
    driver.sync()  # the group of the current workers exists
    expected = ray.get(driver.learner.weights_checksum.remote())
    refs = [w.__ray_call__.remote(transfer._worker_receive) for w in driver.workers]
    assert ray.get(driver.learner.__ray_call__.remote(_send_altered, 99)) > 0
    for got in ray.get(refs):  # computed by each worker from the weights it now holds
        assert [name for name in expected if got[name] != expected[name]] == [next(iter(expected))]
    assert driver.sync()["sync/verified"] == 1.0  # an intact broadcast repairs them


def test_bf16_on_the_wire_matches_the_learners_bf16_checksums(driver):
    """A bf16 broadcast into fp32 engines: they hold the bf16 values, i.e. weights.checksums(model, bf16)."""
    driver.sync()
    refs = [w.__ray_call__.remote(transfer._worker_receive) for w in driver.workers]
    ray.get(driver.learner.__ray_call__.remote(
        lambda lr: lr.weight_group.send(lr.model.named_parameters(), 1, dtype=torch.bfloat16)))
    want = ray.get(driver.learner.__ray_call__.remote(
        lambda lr: weights.checksums(lr.model, torch.bfloat16)))
    assert ray.get(refs) == [want, want]
    assert want != ray.get(driver.learner.weights_checksum.remote())  # bf16 really rounded something
    driver.sync()


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
            up = params[name.replace("gate_proj", "up_proj")]
            vllm.append((name.replace("gate_proj", "gate_up_proj"), torch.cat([p, up])))
        elif "embed_tokens" in name:
            padded = -(-p.shape[0] // 64) * 64
            vllm.append((name, torch.cat([p, torch.zeros(padded - p.shape[0], p.shape[1])])))
        elif not any(x in name for x in ("k_proj", "v_proj", "up_proj")):
            vllm.append((name, p))
    assert any("qkv_proj" in n for n, _ in vllm) and len(vllm) < len(params)
    assert engine_checksums(vllm, shapes) == weights.checksums(model)
    swapped = [(n, torch.cat([t[t.shape[0] // 2:], t[: t.shape[0] // 2]]) if "gate_up" in n else t)
               for n, t in vllm]
    wrong = {n for n, c in engine_checksums(swapped, shapes).items() if c != weights.checksums(model)[n]}
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
