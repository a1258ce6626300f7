"""`make demo` at smoke scale, so it cannot rot: every stage for real (crawl, filter, tokenizer,
pretraining, SFT, GRPO through the session's Ray, the SFT-continued control, evaluation, results.json,
curves.png).

The numbers it prints are meaningless at this scale; the full demo's are in the README. The learning
itself is pinned by tests/test_learning.py (GRPO) and tests/test_pretrain.py (pretraining beats a
bigram).
"""

import json
import math

import pytest
from rich.console import Console

from answerkey import demo
from answerkey.config import load_config

SMOKE = ["--docs=300", "--eval_samples=1",
         "--pretrain.train.steps=12", "--pretrain.train.batch_size=8", "--pretrain.train.micro_batch_size=8",
         "--pretrain.run.eval_every=6", "--pretrain.run.sample_every=0", "--pretrain.train.threads=1",
         "--sft.train.steps=6", "--sft.run.eval_every=3", "--sft.run.sample_every=0",
         "--sft.train.threads=1",
         "--rl.run.steps=2", "--rl.run.eval_every=1", "--rl.run.eval_problems=8",
         "--rl.run.checkpoint_every=0",
         "--rl.rollout.problems_per_step=8", "--rl.rollout.group_size=4", "--rl.rollout.max_new_tokens=16",
         '--rl.env.kwargs={difficulty = 1, kinds = ["chain", "story"], steps = 3, test_size = 24, '
         'checker = "math"}']


@pytest.mark.timeout(600)
def test_the_demo_runs_every_stage_and_writes_its_results(ray_session, tmp_path):
    out = tmp_path / "demo"
    parts = demo.split_overrides([f"--out_dir={out}", *SMOKE])
    results = demo.run(load_config(demo.EXAMPLE, parts["demo"], demo.DemoConfig), parts, Console(width=120))

    assert list(results) == ["base", "SFT", "SFT continued (control)", "RL"]
    for m in results.values():
        assert 0 <= m["accuracy_low"] <= m["accuracy"] <= m["accuracy_high"] <= 1 and m["response_length"] > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["held_out_problems"] == 24 and saved["stages"] == results
    assert math.isclose(saved["rl_minus_sft"], results["RL"]["accuracy"] - results["SFT"]["accuracy"])
    assert (out / "curves.png").stat().st_size > 10_000
    for stage in ("pretrain", "sft", "sft-control"):
        assert (out / stage / "model" / "model.safetensors").is_file(), stage
    assert (out / "rl" / "checkpoints" / "step_000002" / "model").is_dir()
    # the crawl's junk went to the filter, the conversations mix both styles
    kept = (out / "web_kept.jsonl").read_text().splitlines()
    assert 0 < len(kept) < 300
    replies = [json.loads(line)["messages"][-1]["content"]
               for line in (out / "conversations.jsonl").read_text().splitlines()]
    assert any(r.startswith("####") for r in replies) and any(not r.startswith("####") for r in replies)
    # the control trained for (about) the RL stage's wall time, which the demo measured
    assert saved["seconds"]["rl"] > 0 and saved["seconds"]["control"] > 0


def test_stage_overrides_are_routed_by_prefix():
    parts = demo.split_overrides(["--docs=10", "--rl.run.steps=5", "--pretrain.train.lr=1e-3",
                                  "--sft.data.pack=false", "--filter.c4.enabled=false", "--rlx=1"])
    assert parts == {"demo": ["--docs=10", "--rlx=1"], "rl": ["--run.steps=5"],
                     "pretrain": ["--train.lr=1e-3"], "sft": ["--data.pack=false"],
                     "filter": ["--c4.enabled=false"]}


def test_wilson_interval_matches_hand_computed_values():
    # p = 0.5, n = 100: 0.5 -/+ 1.96 * sqrt(0.25/100 + 1.96^2/40000) / (1 + 1.96^2/100)
    low, high = demo.wilson(0.5, 100)
    assert math.isclose(low, 0.40383, abs_tol=1e-5) and math.isclose(high, 0.59617, abs_tol=1e-5)
    low, high = demo.wilson(0.0, 500)
    assert low == 0 and math.isclose(high, 0.00762, abs_tol=1e-5)


def test_a_previous_demo_is_renamed_not_deleted(tmp_path):
    old = tmp_path / "demo"
    old.mkdir()
    (old / "results.json").write_text("{}")
    fresh = demo.fresh_dir(old, Console(quiet=True))
    assert fresh == old and not any(fresh.iterdir())
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith("demo-")]
    assert (kept / "results.json").read_text() == "{}"
