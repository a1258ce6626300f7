"""MetricsLog: one JSON line per step, non-finite values kept as strings, curves drawn from the JSONL."""

from pathlib import Path

from answerkey.metrics import MetricsLog


def test_metrics_log_keeps_every_row_and_marks_non_finite_values(tmp_path):
    log = MetricsLog(tmp_path)
    log.write(1, {"reward/mean": 0.5, "learner/grad_norm": float("nan")})
    log.write(2, {"reward/mean": 0.75})
    rows = log.read()
    assert rows == [{"step": 1, "reward/mean": 0.5, "learner/grad_norm": "nan"},
                    {"step": 2, "reward/mean": 0.75}]
    assert Path(log.plot(["reward/mean", "learner/grad_norm"], tmp_path / "c.png")).stat().st_size > 5_000
