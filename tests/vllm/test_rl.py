"""`answerkey rl --rollout.engine=vllm` through Ray on CPU: every sync verified, checkpoints and an exact
resume, a vLLM worker killed mid-step replaced with its share redone, the gloo broadcast into vLLM."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import ray

from answerkey import cli, driver
from answerkey.config import load_config
from answerkey.rundir import RunDir

EXAMPLE = "examples/tiny_cpu.toml"
STEPS = 4


def overrides(policy: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"--model.path={policy}", f"--run.out_dir={out}", f"--run.name={name}", "--rollout.engine=vllm",
            "--rollout.problems_per_step=8", "--rollout.group_size=4", "--rollout.max_new_tokens=32",
            "--run.eval_problems=8", "--run.eval_samples=2", "--run.checkpoint_every=2", "--run.eval_every=2",
            *extra]


def comparable(run: Path) -> list[dict]:
    """Metrics rows without wall-clock timings (the only thing allowed to differ)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_answerkey_rl_on_vllm_verifies_every_sync_and_resumes_exactly(ray_session, vllm_policy_dir, tmp_path):
    argv = ["rl", EXAMPLE, *overrides(vllm_policy_dir, tmp_path, "straight", f"--run.steps={STEPS}")]
    assert cli.main(argv) == 0
    rows = comparable(tmp_path / "straight")
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["sync/verified"] == 1.0 for r in steps)
    assert any(r["learner/skipped"] == 0.0 for r in steps), "no step had a non-uniform group to learn from"
    assert sorted(p.name for p in (tmp_path / "straight" / "checkpoints").iterdir()) == [
        "step_000002", "step_000004"]

    # the same run stopped after step 2, then resumed from its checkpoint: identical metrics
    assert cli.main(["rl", EXAMPLE, *overrides(vllm_policy_dir, tmp_path, "resumed", "--run.steps=2")]) == 0
    assert cli.main(["rl", EXAMPLE, *overrides(vllm_policy_dir, tmp_path, "resumed", f"--run.steps={STEPS}"),
                     "--resume"]) == 0
    assert comparable(tmp_path / "resumed") == rows


def test_a_vllm_worker_killed_mid_step_is_replaced_and_gloo_syncs_verify(ray_session, vllm_policy_dir,
                                                                          tmp_path):
    cfg = load_config(EXAMPLE, overrides(vllm_policy_dir, tmp_path, "faults", "--run.steps=3",
                                         "--rollout.transport=gloo"))
    loop = driver.start(cfg, RunDir.create(cfg))
    try:
        killed = threading.Event()

        def kill_worker_0_during_rollout():
            while loop.phase != "rollout":
                time.sleep(0.001)
            ray.kill(loop.workers[0], no_restart=True)
            killed.set()

        killer = threading.Thread(target=kill_worker_0_during_rollout)
        killer.start()
        metrics = loop.train_step()
        killer.join()
        assert killed.is_set()
        assert metrics["rollout/worker_restarts"] == 1 and metrics["sync/verified"] == 1.0
        assert sum(v for k, v in metrics.items() if k.startswith("reward/status/")) == 8 * 4
        assert loop.train_step()["sync/verified"] == 1.0  # the next broadcast reaches the replacement too
    finally:
        loop.close()
