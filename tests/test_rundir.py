"""The run directory: self-describing, cut back to the checkpoint on resume, optional sinks named when
missing."""

from __future__ import annotations

import importlib.util
import json

import pytest

from answerkey.config import ConfigError, load_config
from answerkey.rundir import RunDir


def test_a_run_directory_describes_itself_and_refuses_to_overwrite_a_run(tmp_path):
    cfg = load_config(None, [f"--run.out_dir={tmp_path}", "--run.name=r"])
    run = RunDir.create(cfg)
    run.log(1, {"reward/mean": 0.5})
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert {"git_sha", "git_dirty", "packages", "python", "cpu_count", "command"} <= set(meta)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["run"]["name"] == "r"
    with pytest.raises(FileExistsError, match="pass --resume"):
        RunDir.create(cfg)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunDir.create(load_config(None, [f"--run.out_dir={tmp_path}", "--run.name=other"]), resume=True)


def test_truncate_drops_the_rows_of_the_interrupted_steps(tmp_path):
    run = RunDir.create(load_config(None, [f"--run.out_dir={tmp_path}", "--run.name=r"]))
    for step in range(1, 6):
        run.log(step, {"reward/mean": step / 10})
        run.samples(step, [{"completion": "x"}])
    run.truncate(3)
    assert [r["step"] for r in run.metrics.read()] == [1, 2, 3]
    samples = (run.path / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in samples] == [1, 2, 3]


def test_tensorboard_sink_writes_events_or_names_the_missing_package(tmp_path):
    cfg = load_config(None, [f"--run.out_dir={tmp_path}", "--run.name=tb", "--run.tensorboard=true"])
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match=r"run.tensorboard: needs the `tensorboard` package"):
            RunDir.create(cfg)
        return
    run = RunDir.create(cfg)
    run.log(1, {"reward/mean": 0.5})
    run.close()
    assert list((tmp_path / "tb" / "tb").glob("events.*"))
