"""`make demo` end to end on a few steps: run directory, metrics, plot and a loadable policy."""

import json
from pathlib import Path

from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from answerkey import demo
from answerkey.config import load_config
from answerkey.metrics import MetricsLog


def test_demo_writes_metrics_plot_and_a_policy_that_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "WARMUP_STEPS", 20)
    monkeypatch.setattr(demo, "EVAL_SAMPLES", 2)
    cfg = load_config(demo.EXAMPLE, ["--run.steps=3", f"--run.out_dir={tmp_path}", "--rollout.problems_per_step=4"])
    console = Console(record=True, width=200)
    results = demo.run(cfg, console)
    assert set(results) == {"before RL", "after RL"}
    assert all(0.0 <= r["eval/reward"] <= 1.0 for r in results.values())
    (run_dir,) = tmp_path.glob("demo-*")
    rows = MetricsLog(run_dir).read()
    steps = [r for r in rows if "learner/skipped" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all("reward/mean" in r and "time/step_s" in r for r in steps)
    assert (run_dir / "curves.png").stat().st_size > 10_000
    sft_rows = MetricsLog(run_dir / "sft").read()
    assert [r["step"] for r in sft_rows] == list(range(1, 21)) and all(r["sft/loss"] > 0 for r in sft_rows)
    assert (run_dir / "sft" / "loss.png").stat().st_size > 5_000
    assert json.loads((run_dir / "config.json").read_text())["run"]["steps"] == 3
    policy = AutoModelForCausalLM.from_pretrained(run_dir / "policy")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "policy")
    assert policy.generation_config.eos_token_id == [tokenizer.convert_tokens_to_ids("<|im_end|>"), 0]
    assert "mean reward" in console.export_text()


def test_demo_rejects_a_model_path_it_would_ignore(capsys):
    assert demo.main(["--model.path=runs/sft"]) == 2
    assert "model.path: the demo builds and warms up its own policy" in capsys.readouterr().err


def test_metrics_log_keeps_every_row_and_marks_non_finite_values(tmp_path):
    log = MetricsLog(tmp_path)
    log.write(1, {"reward/mean": 0.5, "learner/grad_norm": float("nan")})
    log.write(2, {"reward/mean": 0.75})
    rows = log.read()
    assert rows == [{"step": 1, "reward/mean": 0.5, "learner/grad_norm": "nan"}, {"step": 2, "reward/mean": 0.75}]
    assert Path(log.plot(["reward/mean", "learner/grad_norm"], tmp_path / "c.png")).stat().st_size > 5_000
