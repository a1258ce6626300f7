"""`answerkey rl` with a 2-rank FSDP2 learner group (gloo) through real Ray actors: verified syncs over
the object store and the gloo broadcast, sharded checkpoints, `--resume` from one, export to HF.

Ray is the session's local head (2 CPUs): the learner ranks reserve none (placement cpu), the two
rollout workers one each, as in tests/test_driver.py. The gradient equivalence with one process is
tested without Ray in tests/test_fsdp.py.
"""

from __future__ import annotations

import numpy as np
import ray
from safetensors.numpy import load_file

from answerkey import cli
from answerkey import driver as rl_driver
from answerkey.config import load_config
from answerkey.learner import checkpoint
from answerkey.rundir import RunDir
from tests.test_driver import EXAMPLE, overrides, rows

FSDP = ("--learner.world_size=2", "--learner.threads=1", "--rollout.workers=2")


def test_two_rank_learner_trains_syncs_checkpoints_resumes_and_exports(ray_session, policy_dir,
                                                                        tmp_path):
    argv = ["rl", EXAMPLE, *overrides(policy_dir, tmp_path, "fsdp", "--run.steps=3",
                                      "--run.checkpoint_every=2", *FSDP)]
    assert cli.main(argv) == 0
    run = tmp_path / "fsdp"
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000003"]
    assert all(checkpoint.load(run / "checkpoints" / c).sharded for c in ckpts)
    assert not (run / "checkpoints/step_000003/model").exists()  # weights only as DCP shards

    argv = ["rl", EXAMPLE, *overrides(policy_dir, tmp_path, "fsdp", "--run.steps=4",
                                      "--run.checkpoint_every=2", *FSDP), "--resume"]
    assert cli.main(argv) == 0
    steps = [r for r in rows(run) if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["sync/verified"] == 1.0 and r["sync/bytes"] > 0 for r in steps)
    assert any(r["learner/skipped"] == 0.0 for r in steps), "no step had a non-uniform group to learn from"

    out = tmp_path / "hf"
    assert cli.main(["export", str(run / "checkpoints/step_000004"), str(out)]) == 0
    before, after = load_file(policy_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not np.array_equal(before[k], after[k]) for k in before), "GRPO did not change any parameter"


def test_two_rank_learner_syncs_over_the_gloo_broadcast(ray_session, policy_dir, tmp_path):
    cfg = load_config(EXAMPLE, overrides(policy_dir, tmp_path, "fsdp-gloo", "--run.steps=3",
                                         "--rollout.transport=gloo", *FSDP))
    driver = rl_driver.start(cfg, RunDir.create(cfg))
    try:
        assert driver.learner.world_size == 2
        before = ray.get(driver.learner.weights_checksum.remote())
        for _ in range(3):  # until a step has a non-uniform group to learn from
            metrics = driver.train_step()
            assert metrics["sync/verified"] == 1.0
            if metrics["learner/skipped"] == 0.0:
                break
        after = ray.get(driver.learner.weights_checksum.remote())
    finally:
        driver.close()
    assert metrics["learner/skipped"] == 0.0
    assert before.keys() == after.keys() and before != after, \
        "the learner did not move, so the sync proved nothing"
