import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from answerkey.cli import main
from answerkey.config import ConfigError, describe_batch, field_docs, load_config, parse_overrides

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "tiny_cpu.toml"


def test_example_loads_and_overrides_apply():
    cfg = load_config(EXAMPLE, ["--learner.lr=1e-5", "--rollout.stop", '["\\n\\n"]', "--model.path=runs/sft"])
    assert cfg.learner.lr == 1e-5 and cfg.rollout.stop == ["\n\n"] and cfg.model.path == "runs/sft"
    assert cfg.env.kwargs["difficulty"] == 2
    sampling = cfg.rollout.sampling()
    assert sampling.max_new_tokens == cfg.rollout.max_new_tokens and sampling.stop == ("\n\n",)
    assert "32 problems x 8 completions = 256 completions per step" in describe_batch(cfg)



def schema_of(command: str):
    """The config class that `answerkey <command>` (or `python -m answerkey.demo`) loads its file with (None:
    the RL `Config`)."""
    from answerkey.demo import DemoConfig
    from answerkey.pretrain.config import PretrainConfig, SFTConfig
    from answerkey.pretrain.filter import FilterConfig

    schemas = {"pretrain": PretrainConfig, "sft": SFTConfig, "filter": FilterConfig, "demo": DemoConfig}
    return schemas.get(command)


def commands_in(path: Path) -> list[tuple[str, list[str]]]:
    """(command, overrides) of each command line in the file's comment that runs it: `answerkey rl
    examples/<it> --key=value ...`, `python -m answerkey.demo examples/<it>`; a line ending in `\\`
    continues on the next."""
    text = re.sub(r"\\\n#", " ", path.read_text())
    found = []
    for line in text.splitlines():
        match = re.search(rf"(?:answerkey (\w+)|python -m answerkey\.(demo))\b.*examples/{path.name}(.*)",
                          line)
        if match:
            args = shlex.split(match[3].split("#")[0])
            found.append((match[1] or match[2], [a for a in args if a.startswith("--") and "=" in a]))
    return found


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_validates_with_the_command_it_names(path):
    """Each example's comment names the command that runs it; the file validates with that command's config
    class and the overrides written on that line."""
    commands = commands_in(path)
    assert commands, f"{path.name} names no command that runs it (`answerkey <command> examples/{path.name}`)"
    for command, overrides in commands:
        schema = schema_of(command)
        load_config(path, overrides, *([schema] if schema else []))

@pytest.mark.parametrize(
    "overrides, key, message",
    [
        (["--rollout.group_size=1"], "rollout.group_size", "a group of one"),
        (["--run.steps=0"], "run.steps", "trains nothing"),
        (["--learner.lr=0"], "learner.lr", "never changes the policy"),
        (["--learner.lrr=1e-3"], "learner.lrr", "unknown key"),
        (["--learnr.lr=1e-3"], "learnr", "unknown key"),
        (["--run.steps=ten"], "run.steps", "valid integer"),
        (["--run.steps=1.5"], "run.steps", "valid integer"),
        (["--learner.passes=0"], "learner.passes", "greater than or equal to 1"),
        (["--learner.loss_agg=mean"], "learner.loss_agg", "'token-mean', 'sequence-mean' or 'dr-grpo'"),
        (["--rollout.temperature=0"], "rollout.temperature", "greater than 0"),
        (["--learner.scale_by_std=yes"], "learner.scale_by_std", "valid boolean"),
    ],
)
def test_bad_settings_fail_naming_the_key(overrides, key, message):
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLE, overrides)
    line = next(line for line in str(err.value).splitlines() if line.strip().startswith(f"{key}:"))
    assert message in line


def test_every_bad_key_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["--rollout.group_size=1", "--run.steps=0"])
    assert "rollout.group_size" in str(err.value) and "run.steps" in str(err.value)


@pytest.mark.parametrize("args", [["learner.lr=1"], ["--run.steps"], ["--"]])
def test_malformed_overrides(args):
    with pytest.raises(ConfigError):
        parse_overrides(args)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[learner\nlr = 1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)


def test_every_field_is_documented():
    rows = field_docs()
    assert len(rows) > 25
    assert all(doc for _, _, doc in rows), [key for key, _, doc in rows if not doc]


def test_cli_help_lists_subcommands_and_bad_config_exits_2(capsys):
    out = subprocess.run([sys.executable, "-m", "answerkey.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "config" in out and "env" in out
    assert main(["config", str(EXAMPLE), "--rollout.group_size=1"]) == 2
    assert "rollout.group_size" in capsys.readouterr().out
    assert main(["config", str(EXAMPLE), "--run.steps=2"]) == 0
    assert "2 steps = 512 completions" in capsys.readouterr().out.replace("\n", " ")


def test_cli_env_checks_the_reward_on_worked_solutions(capsys):
    argv = ["env", "answerkey.envs.synthetic:SyntheticEnv", "--kwargs", '{"difficulty": 3}', "-n", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mean 1.000" in out and "'correct': 200" in out
    assert main(["env", "answerkey.envs.nope:Env"]) == 2
