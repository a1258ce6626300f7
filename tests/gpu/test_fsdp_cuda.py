"""The FSDP2 learner on GPUs: NCCL, bf16 MixedPrecisionPolicy, gradient checkpointing, DCP on CUDA.

Ranks are plain processes (`tests.fsdp_ranks`, as in tests/test_fsdp.py, no Ray): 2 on a machine with
2+ GPUs (one each), else 1 rank on the one GPU (NCCL cannot put two ranks on one device; a 1-rank
group still runs fully_shard, the NCCL collectives, mixed precision and DCP). The reference is the
plain `Learner` on the same GPU. Measured gaps are printed (`-s`); the bounds are stated below.
`ANSWERKEY_TEST_DEVICE=cpu` rehearses the file on CPU with gloo.

NEVER RUN on a GPU yet (written in a session without one): the bounds are CPU-rehearsed guesses.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from answerkey import cli
from answerkey.config import LearnerConfig
from answerkey.learner.learner import Learner
from answerkey.rollout.torch_engine import TorchEngine
from tests.fsdp_ranks import PROBE_IDS, SAMPLING, run_ranks
from tests.gpu import DEVICE, informative_groups, requires_gpu

pytestmark = requires_gpu

BACKEND = "nccl" if DEVICE == "cuda" else "gloo"
# fp32 FSDP vs one process on one GPU: the same math, other reduction orders (no TF32: torch's default)
FP32_TOL = {"rtol": 1e-3, "atol": 1e-6}


def world() -> int:
    return min(2, torch.cuda.device_count()) if DEVICE == "cuda" else 2


@pytest.fixture(scope="module")
def setup(policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp-cuda")
    path = out / "policy"
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    engine = TorchEngine(policy.copy(), policy.tokenizer, seed=2)
    groups = informative_groups(engine, policy.env, policy.tokenizer, SAMPLING, 16, 8, random.Random(1))
    return out, path, groups


def reference(path, cfg: dict, groups) -> dict:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(DEVICE)
    learner = Learner(model, LearnerConfig(**cfg), SAMPLING, total_steps=10)
    metrics = learner.step(groups)
    return {"grads": {n: p.grad.cpu() for n, p in model.named_parameters()}, "metrics": metrics}


def flat(grads: dict, names) -> torch.Tensor:
    return torch.cat([grads[n].flatten().float() for n in names])


def test_fsdp_nccl_fp32_bf16_and_checkpointing_against_one_process(setup):
    out, path, groups = setup
    cases = {"fp32": {"lr": 1e-4, "kl_coef": 0.05, "passes": 2, "micro_batch_tokens": 512},
             "bf16": {"lr": 1e-4, "precision": "bf16"},
             "bf16+checkpointing": {"lr": 1e-4, "precision": "bf16", "gradient_checkpointing": True}}
    torch.save({"groups": groups, "cases": {k: {"cfg": v, "dtype": torch.float32} for k, v in cases.items()}},
               out / "grads_cases.pt")
    run_ranks("grads", out, path, world=world(), backend=BACKEND, timeout_s=240)
    results = torch.load(out / "grads_results.pt", weights_only=False)
    want = reference(path, cases["fp32"], groups)
    names = list(want["grads"])
    gap = max(float((results["fp32"]["grads"][n] - want["grads"][n]).abs().max()) for n in names)
    print(f"\n[gpu] FSDP2 {BACKEND} x{world()} fp32 vs one process: max |grad diff| {gap:.2e}")
    for n in names:
        torch.testing.assert_close(results["fp32"]["grads"][n], want["grads"][n], **FP32_TOL, msg=n)
    fp32 = reference(path, {"lr": 1e-4}, groups)
    for case in ("bf16", "bf16+checkpointing"):
        g, w = flat(results[case]["grads"], names), flat(fp32["grads"], names)
        cosine = float(torch.nn.functional.cosine_similarity(g, w, dim=0))
        print(f"[gpu] FSDP2 {case} vs fp32 one process: cosine {cosine:.4f}, "
              f"norm ratio {float(g.norm() / w.norm()):.3f}")
        assert torch.isfinite(g).all() and cosine > 0.98
    same = max(float((results["bf16"]["grads"][n] - results["bf16+checkpointing"]["grads"][n]).abs().max())
               for n in names)
    print(f"[gpu] bf16 with vs without gradient checkpointing: max |grad diff| {same:.2e}")


def test_fsdp_dcp_checkpoint_resumes_and_exports_on_cuda(setup, policy, tmp_path):
    out, path, _ = setup
    rng = random.Random(3)
    engine = TorchEngine(policy.copy(), policy.tokenizer, seed=4)
    steps = [informative_groups(engine, policy.env, policy.tokenizer, SAMPLING, 8, 8, rng) for _ in range(4)]
    cfg = {"lr": 1e-4, "precision": "bf16", "kl_coef": 0.05, "warmup_steps": 1, "schedule": "cosine"}
    torch.save({"cfg": cfg, "groups": steps}, out / "resume_inputs.pt")
    run_ranks("resume", out, path, world=world(), backend=BACKEND, timeout_s=240)
    results = torch.load(out / "resume_results.pt", weights_only=False)
    straight, resumed = results["straight"], results["resumed"]
    gap = max(float((straight["params"][n] - resumed["params"][n]).abs().max()) for n in straight["params"])
    print(f"\n[gpu] FSDP2 resume: max |param diff| after 2 more steps {gap:.2e} "
          "(CUDA kernels need not be deterministic)")
    assert resumed["optimizer_steps"] == 2 and gap < 1e-4
    assert cli.main(["export", straight["path"], str(tmp_path / "hf")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=PROBE_IDS).logits
    diff = float((logits - straight["logits_at_2"].float()).abs().max())
    print(f"[gpu] exported model (CPU fp32) vs FSDP bf16 logits: max diff {diff:.3f}")
    assert diff < 0.5  # the FSDP forward computed in bf16 (mixed precision), the export's in fp32
