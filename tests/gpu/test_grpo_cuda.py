"""GRPO steps on one GPU through the loop `answerkey rl` runs (`answerkey.loop.Loop`), on plain objects in
one process (`answerkey.local`): the learner trains the policy on the GPU, a rollout worker samples from its
own copy on the same GPU, and after every step the learner's weights are pushed into the worker and verified
(checksums, and the logprobs the worker reports for a seeded sample against the learner's), as the Ray driver
verifies its workers. Per-step times (rollout, learn, sync) are printed, never asserted.
"""

import math

import torch

from answerkey import local
from answerkey.config import load_config
from tests.gpu import requires_gpu

pytestmark = requires_gpu

STEPS, PROBLEMS, GROUP = 4, 32, 8


def test_grpo_steps_through_the_loop_change_the_policy_and_keep_the_worker_in_sync(policy):
    env_kwargs = "{difficulty = 1, train_size = 2000, test_size = 64}"  # the `policy` fixture's env
    cfg = load_config("examples/tiny_cpu.toml", [
        f"--env.kwargs={env_kwargs}", f"--rollout.problems_per_step={PROBLEMS}",
        f"--rollout.group_size={GROUP}", "--rollout.max_new_tokens=24", "--rollout.workers=1",
        "--learner.lr=2e-4", f"--run.steps={STEPS}"])
    loop = local.start(cfg, policy.copy(), policy.tokenizer)  # its first sync is already verified
    initial = {n: p.detach().clone() for n, p in loop.learner.model.named_parameters()}
    seen = set()
    try:
        while loop.step < STEPS:
            metrics = loop.train_step()
            assert all(math.isfinite(v) for v in metrics.values()), metrics
            assert metrics["sync/verified"] == 1.0 and metrics["sync/version"] == loop.step
            assert metrics["learner/skipped"] == 0 and metrics["learner/grad_norm"] > 0, metrics
            seen.add(tuple(sorted(loop.workers[0].engine.weights_checksum().items())))
            print(f"\n[gpu] GRPO step {loop.step}: reward {metrics['reward/mean']:.3f}, "
                  f"loss {metrics['learner/loss']:+.4f}, rollout {metrics['time/rollout_s']:.2f} s, "
                  f"reward {metrics['time/reward_s']:.2f} s, learn {metrics['time/learn_s']:.2f} s, "
                  f"sync+verify {metrics['time/sync_s']:.2f} s, step {metrics['time/step_s']:.2f} s", end="")
    finally:
        loop.close()
    assert len(seen) == STEPS  # every sync delivered new weights
    assert any(not torch.equal(initial[n], p) for n, p in loop.learner.model.named_parameters())
