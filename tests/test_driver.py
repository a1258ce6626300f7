"""`answerkey rl` through real Ray actors: end to end, a multi-turn env, start-up checks (faults:
test_driver_faults.py).

Ray is the session's local head (conftest `ray_session`); the policy is a tiny Llama warmed up on the
synthetic world (conftest `policy_dir`), so some groups score non-uniformly and the learner moves.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from safetensors.numpy import load_file

from answerkey import cli, driver
from answerkey.config import ConfigError, load_config
from answerkey.loop import Loop
from answerkey.rundir import RunDir

EXAMPLE = "examples/tiny_cpu.toml"


def overrides(policy_dir: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"--model.path={policy_dir}", f"--run.out_dir={out}", f"--run.name={name}",
            "--rollout.problems_per_step=8", "--rollout.group_size=4", "--run.eval_problems=8",
            "--run.eval_samples=2", *extra]


def make_driver(policy_dir: Path, out: Path, name: str, *extra: str) -> Loop:
    """The loop `answerkey rl` runs, on Ray actors, its first sync verified."""
    cfg = load_config(EXAMPLE, overrides(policy_dir, out, name, *extra))
    return driver.start(cfg, RunDir.create(cfg))


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_answerkey_rl_runs_end_to_end_through_ray_actors(ray_session, policy_dir, tmp_path):
    argv = ["rl", EXAMPLE, *overrides(policy_dir, tmp_path, "e2e", "--run.steps=4",
                                      "--run.checkpoint_every=2", "--run.eval_every=2",
                                      "--run.sample_every=1", "--rollout.workers=2")]
    assert cli.main(argv) == 0
    run = tmp_path / "e2e"
    steps = [r for r in rows(run) if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["sync/verified"] == 1.0 and r["sync/bytes"] > 0 for r in steps)
    assert sum(r["reward/status/correct"] + r["reward/status/wrong"] + r["reward/status/no_answer"]
               + r["reward/status/unparseable"] for r in steps) == 4 * 8 * 4  # every completion scored once
    assert any(r["learner/skipped"] == 0.0 for r in steps), "no step had a non-uniform group to learn from"
    evals = [r for r in rows(run) if "eval/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 2, 4] and all(0 <= r["eval/maj@2"] <= 1 for r in evals)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    before = load_file(policy_dir / "model.safetensors")
    after = load_file(run / "checkpoints/step_000004/model/model.safetensors")
    assert any(not np.array_equal(before[k], after[k]) for k in before), "GRPO did not change any parameter"
    for name in ("curves.png", "samples.jsonl", "config.json", "meta.json"):
        assert (run / name).stat().st_size > 0, name
    meta = json.loads((run / "meta.json").read_text())
    assert len(meta["git_sha"]) == 40 and meta["packages"]["ray"] and meta["packages"]["torch"]
    sample = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
    assert {"problem", "completion", "reward", "status"} <= set(sample)


def test_a_multi_turn_env_runs_its_episodes_in_the_workers(ray_session, policy_dir, tmp_path):
    loop = make_driver(policy_dir, tmp_path, "retry", "--run.steps=1",
                       "--env.path=answerkey.envs.synthetic:SyntheticRetryEnv")
    try:
        metrics = loop.train_step()
        evaluation = loop.evaluate()
    finally:
        loop.close()
    assert sum(v for k, v in metrics.items() if k.startswith("reward/status/")) == 8 * 4
    assert metrics["sync/verified"] == 1.0 and 0 <= evaluation["eval/pass@1"] <= 1


def test_more_workers_than_the_cluster_has_cpus_fails_at_start_naming_the_keys(ray_session, policy_dir,
                                                                               tmp_path):
    with pytest.raises(ConfigError, match=r"rollout.workers x rollout.threads_per_worker = 3 CPUs.*has 2"):
        make_driver(policy_dir, tmp_path, "big", "--rollout.workers=3")


def test_the_vllm_engine_without_vllm_installed_fails_at_start_naming_the_key(ray_session, policy_dir,
                                                                              tmp_path):
    """The core venv has no vLLM (tests/vllm runs it in its own): the worker's start-up error reaches the
    user as a config error, with what to install, and no actor is left behind."""
    pytest.importorskip("ray")
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(ConfigError, match=r"rollout worker 0 \(rollout.engine = 'vllm'\) did not start: .*"
                                          r"pip install 'answerkey\[vllm\]'"):
        make_driver(policy_dir, tmp_path, "novllm", "--rollout.engine=vllm")
    deadline = time.monotonic() + 30  # the failed start killed its workers; Ray frees their CPUs soon after
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, "the failed start left its workers' CPUs held"
        time.sleep(0.1)


def test_resume_before_the_first_checkpoint_starts_from_step_0(ray_session, policy_dir, tmp_path):
    cfg = load_config(EXAMPLE, overrides(policy_dir, tmp_path, "early", "--run.steps=1"))
    RunDir.create(cfg)  # a run that died before its first checkpoint
    loop = driver.start(cfg, RunDir.create(cfg, resume=True), resume=True)
    try:
        assert loop.step == 0 and loop.sampler.position == 0
    finally:
        loop.close()
