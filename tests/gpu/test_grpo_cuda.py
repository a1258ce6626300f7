"""A few colocated GRPO steps on one GPU: bf16 engine and bf16-autocast learner, synced and verified every step.

The loop of `answerkey.local` / the demo with what a GPU run adds: the engine holds its own bf16 copy
of the policy (as vLLM would), and after every learner step the learner's weights are copied into it
in place on the GPU and its checksums are checked against the learner's weights cast to bf16. Per-step
times (rollout, learn, sync) are printed, never asserted.
"""

import math
import random
import time

import torch

from answerkey.config import LearnerConfig
from answerkey.learner.learner import Learner
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine
from tests.gpu import checksums_as, informative_groups, push, requires_gpu, synchronize

pytestmark = requires_gpu

STEPS, PROBLEMS, GROUP = 4, 32, 8


def test_colocated_grpo_steps_change_the_policy_and_keep_the_engine_in_sync(policy):
    sampling = SamplingParams(max_new_tokens=24, temperature=1.0)
    learner = Learner(policy.copy(), LearnerConfig(lr=2e-4, precision="bf16"), sampling, total_steps=STEPS)
    engine = TorchEngine(policy.copy(torch.bfloat16), policy.tokenizer, seed=0)
    initial = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    rng, seen = random.Random(0), set()
    for step in range(1, STEPS + 1):
        times = [time.perf_counter()]
        groups = informative_groups(engine, policy.env, policy.tokenizer, sampling, PROBLEMS, GROUP, rng)
        times.append(_now())
        metrics = learner.step(groups)
        times.append(_now())
        push(learner.model, engine, version=step, route="device")
        checksums = engine.weights_checksum()
        times.append(_now())
        rewards = [t.score.value for g in groups for t in g]
        assert all(math.isfinite(r) for r in rewards) and all(math.isfinite(v) for v in metrics.values()), metrics
        assert metrics["learner/skipped"] == 0 and metrics["learner/grad_norm"] > 0
        assert checksums == checksums_as(learner.model, torch.bfloat16), f"step {step}: engine weights differ from the learner's"
        seen.add(tuple(sorted(checksums.items())))
        rollout_s, learn_s, sync_s = (b - a for a, b in zip(times, times[1:], strict=False))
        print(f"\n[gpu] GRPO step {step}: {len(rewards)} completions, reward {sum(rewards) / len(rewards):.3f}, "
              f"loss {metrics['learner/loss']:+.4f}, rollout {rollout_s:.2f} s, learn {learn_s:.2f} s, "
              f"sync+verify {sync_s:.2f} s, step {times[-1] - times[0]:.2f} s", end="")
    assert len(seen) == STEPS  # every sync delivered new weights
    assert any(not torch.equal(initial[n], p) for n, p in learner.model.named_parameters())


def _now() -> float:
    synchronize()
    return time.perf_counter()
