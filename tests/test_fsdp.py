"""The FSDP2 learner on 2 CPU processes (gloo) against one process: the same gradients, updates and
metrics in every loss-aggregation mode; DCP checkpoints that resume exactly, survive a SIGKILL and
export to a Hugging Face directory with identical logits; a failing rank named by the others.

The ranks are real processes (`python -m tests.fsdp_ranks`), rendezvousing on a TCPStore hosted here;
the reference is the plain `Learner` on the same policy and groups. The driver through Ray with a
2-rank learner is in tests/test_fsdp_driver.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from answerkey import cli
from answerkey.config import LearnerConfig
from answerkey.learner import checkpoint
from answerkey.learner.batch import make_batch
from answerkey.learner.learner import Learner
from answerkey.learner.shard import Ranks, deal
from tests.fsdp_ranks import PROBE_IDS, SAMPLING, run_ranks
from tests.test_learner import REWARDS, make_groups

pytestmark = pytest.mark.slow  # FSDP ranks in their own processes: make check leaves it out

AGGS = ("token-mean", "sequence-mean", "dr-grpo")
# every knob of the step: KL reference (sharded), two passes (old logprobs), TIS, truncation mask, several
# micro-batches per rank, an active grad-norm clip, warmup
HARD = {"kl_coef": 0.1, "passes": 2, "mask_truncated": True, "micro_batch_tokens": 120, "max_grad_norm": 1e-3,
        "warmup_steps": 2}


@pytest.fixture(scope="module")
def policy_path(make_model_module, tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fsdp-policy")
    make_model_module(seed=3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def make_model_module(tokenizer):
    from answerkey import chat
    from answerkey.model import build_model

    return lambda seed=0: build_model("tiny", len(tokenizer), chat.stop_token_ids(tokenizer),
                                      pad_id=tokenizer.pad_token_id, seed=seed)


def test_deal_balances_tokens_and_covers_every_row_once():
    assert deal([5, 3, 3, 1], 2) == [[0, 3], [1, 2]]
    lengths = [17, 3, 9, 9, 40, 2, 2, 11, 5]
    shares = deal(lengths, 3)
    assert sorted(i for s in shares for i in s) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(lengths)


def test_every_rank_gets_the_same_number_of_micro_batches(tokenizer, synthetic_env):
    batch = make_batch(make_groups(tokenizer, synthetic_env, REWARDS), True, True, False, 16)
    plans = [Ranks(r, 3).split(batch).plans(60) for r in range(3)]
    assert all(p == plans[0] for p in plans)  # every rank computes every rank's plan alike
    counts = {len(p) for p in plans[0]}
    assert counts == {len(plans[0][0])}
    trained = sorted(i for p in plans[0] for mb in p for i in mb if i < len(batch.rows))
    assert trained == list(range(len(batch.rows)))  # each row once; the rest is the padding row


def reference(policy: Path, cfg: dict, groups, dtype=torch.float64) -> dict:
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=dtype)
    # the HF forward, as on the ranks (the lean forward needs plain tensors; in fp64 it also skips HF's
    # fp32 RMSNorm)
    learner = Learner(model, LearnerConfig(**cfg), SAMPLING, total_steps=10, lean=False)
    metrics = learner.step(groups)
    return {"grads": {n: p.grad for n, p in model.named_parameters()},
            "params": dict(model.named_parameters()), "metrics": metrics}


@pytest.fixture(scope="module")
def grads_run(policy_path, tokenizer, synthetic_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp-grads")
    groups = make_groups(tokenizer, synthetic_env, REWARDS, truncated={(0, 1)})
    cases = {f"{agg}": {"cfg": {"lr": 1e-3, "loss_agg": agg}, "dtype": torch.float64} for agg in AGGS}
    cases |= {f"{agg}+kl+passes": {"cfg": {"lr": 1e-3, "loss_agg": agg, **HARD}, "dtype": torch.float64}
              for agg in AGGS}
    cases["checkpointing"] = {"cfg": {"lr": 1e-3, "micro_batch_tokens": 120, "gradient_checkpointing": True},
                              "dtype": torch.float64}
    cases["fp32"] = {"cfg": {"lr": 1e-3, **HARD}, "dtype": torch.float32}
    cases["bf16"] = {"cfg": {"lr": 1e-3, "precision": "bf16"}, "dtype": torch.float32}
    torch.save({"groups": groups, "cases": cases}, out / "grads_cases.pt")
    run_ranks("grads", out, policy_path)
    return out, groups, cases, torch.load(out / "grads_results.pt", weights_only=False)


@pytest.mark.parametrize("case", [*AGGS, *(f"{a}+kl+passes" for a in AGGS), "checkpointing", "fp32"])
def test_two_ranks_give_one_process_gradient_update_and_metrics(grads_run, policy_path, case):
    _, groups, cases, results = grads_run
    got = results[case]
    cfg = dict(cases[case]["cfg"])
    # the reference without it: checkpointing must not change the gradient
    cfg.pop("gradient_checkpointing", None)
    want = reference(policy_path, cfg, groups, cases[case]["dtype"])
    fp64 = cases[case]["dtype"] == torch.float64
    tol = {"rtol": 1e-10, "atol": 1e-13} if fp64 else {"rtol": 1e-4, "atol": 1e-6}
    assert set(got["grads"]) == set(want["grads"]) and len(got["grads"]) == len(dict(want["params"]))
    for name, grad in want["grads"].items():
        torch.testing.assert_close(got["grads"][name], grad, **tol, msg=f"gradient of {name}")
        torch.testing.assert_close(got["params"][name], want["params"][name].detach(), **tol,
                                   msg=f"updated {name}")
    assert set(got["metrics"]) == set(want["metrics"])
    for key, value in want["metrics"].items():
        assert got["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert got["metrics"]["learner/skipped"] == 0 and got["metrics"]["learner/grad_norm"] > 0
    if "max_grad_norm" in cfg:
        assert got["metrics"]["learner/grad_norm"] > cfg["max_grad_norm"], "the clip was not active"


def test_bf16_mixed_precision_follows_the_fp32_gradient(grads_run, policy_path):
    _, groups, cases, results = grads_run
    want = reference(policy_path, {"lr": 1e-3}, groups, torch.float32)
    got = results["bf16"]
    g = torch.cat([got["grads"][n].flatten() for n in want["grads"]])
    w = torch.cat([want["grads"][n].flatten() for n in want["grads"]])
    assert got["params"]["model.embed_tokens.weight"].dtype == torch.float32  # fp32 master weights
    assert torch.isfinite(g).all() and not torch.equal(g, w)  # bf16 compute really rounded
    assert float(torch.nn.functional.cosine_similarity(g, w, dim=0)) > 0.99
    assert 0.9 < float(g.norm() / w.norm()) < 1.1


def test_a_failing_rank_is_named_by_the_rank_waiting_for_it(grads_run):
    out = grads_run[0]
    rank0 = (out / "failure_rank0.txt").read_text()
    assert "failed in step" in rank0 and "rank 1: RuntimeError" not in rank0
    assert "rank 1: ValueError: groups must be P lists of G trajectories" in rank0, rank0


@pytest.fixture(scope="module")
def resume_run(policy_path, tokenizer, synthetic_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp-resume")
    rewards = [REWARDS, [[0.0, 1.0, 1.0, 0.0]] * 4, [[1.0, 0.0, 0.5, 0.0]] * 4, REWARDS[::-1]]
    steps = [make_groups(tokenizer, synthetic_env, r, seed=k) for k, r in enumerate(rewards)]
    cfg = {"lr": 1e-3, "kl_coef": 0.05, "warmup_steps": 1, "schedule": "cosine", "micro_batch_tokens": 200}
    torch.save({"cfg": cfg, "groups": steps}, out / "resume_inputs.pt")
    run_ranks("resume", out, policy_path)
    return out, torch.load(out / "resume_results.pt", weights_only=False)


def test_dcp_checkpoint_resumes_exactly(resume_run):
    out, results = resume_run
    straight, resumed = results["straight"], results["resumed"]
    assert resumed["optimizer_steps"] == 2
    assert straight["metrics"][2:] == resumed["metrics"]
    for part in ("params", "exp_avg_sq"):
        assert straight[part].keys() == resumed[part].keys() and straight[part]
        for name in straight[part]:
            assert torch.equal(straight[part][name], resumed[part][name]), f"{part} of {name}"
    ckpt = Path(straight["path"])
    assert ckpt == out / "checkpoints" / "step_000002"
    assert sorted(p.name for p in (ckpt / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    loaded = checkpoint.load(ckpt)
    assert loaded.sharded and loaded.step == 2 and loaded.run_state["sampler_position"] == 16
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_export_gives_a_transformers_model_with_identical_logits(resume_run, tmp_path):
    out, results = resume_run
    ckpt = results["straight"]["path"]
    assert cli.main(["export", ckpt, str(tmp_path / "hf")]) == 0
    written = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= written
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=PROBE_IDS).logits
    assert torch.equal(logits, results["straight"]["logits_at_2"])
    assert cli.main(["export", ckpt, str(tmp_path / "hf")]) == 2  # the target exists: refused, kept


def test_a_kill_during_a_dcp_save_leaves_the_last_checkpoint_complete(policy_path, tmp_path):
    root = tmp_path / "checkpoints"

    def partial_written() -> bool:  # a later checkpoint half-written: some shard files in a .tmp-* dir
        saved = tmp_path / "saved.txt"
        return saved.exists() and int(saved.read_text()) >= 2 and any(root.glob(".tmp-*/dcp/*.distcp"))

    run_ranks("crash", tmp_path, policy_path, until=partial_written, timeout_s=300)
    assert partial_written(), "the ranks exited before a partial checkpoint was seen"
    last = checkpoint.latest(root)
    ckpt = checkpoint.load(last)
    assert ckpt.sharded and ckpt.step >= 2
    assert cli.main(["export", str(last), str(tmp_path / "hf")]) == 0
    AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert checkpoint.clean_partial(root) and not list(root.glob(".tmp-*"))


def test_gradient_checkpointing_recomputes_each_layer_and_keeps_names_and_gradients(make_model_module):
    from answerkey.learner.fsdp import checkpoint_layers, decoder_layers

    plain, checkpointed = make_model_module(seed=1).double(), make_model_module(seed=1).double()
    checkpoint_layers(checkpointed)
    calls = []
    for layer in decoder_layers(checkpointed):
        layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))  # a post hook: cut by early stop
    ids = PROBE_IDS
    for model in (plain, checkpointed):
        model(input_ids=ids).logits.logsumexp(-1).sum().backward()
    layers = len(decoder_layers(checkpointed))
    assert len(calls) == 2 * layers  # the forward, and the recomputation in the backward
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in checkpointed.named_parameters()]
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-12, atol=1e-14, msg=name)
    with torch.no_grad():  # no backward: no recomputation, and the model still generates with its cache
        calls.clear()
        checkpointed(input_ids=ids)
    assert len(calls) == layers
