"""`make demo`: the whole story of the talk on a laptop CPU, from raw text to an assistant that learns by
practice.

    python -m answerkey.demo [examples/demo.toml] [--docs=3000] [--pretrain.train.steps=500]
                             [--rl.run.steps=30]
    answerkey demo ...                                           # the same

1. web:      a synthetic crawl of an arithmetic-minded web (`pretrain/synthetic_web.py`), junk included,
             filtered FineWeb-style (`answerkey filter`, `examples/filter_demo.toml`);
2. base:     a BPE tokenizer and a small Llama pretrained on what the filter kept (`answerkey pretrain`,
             `examples/pretrain_demo.toml`): a document simulator that knows its sums, but not chat;
3. SFT:      conversations in the chat template (`answerkey sft`, `examples/sft_demo.toml`) whose
             demonstrator answers half the problems with the steps worked out and half with the bare answer;
4. RL:       GRPO through the Ray driver (`answerkey rl`, `examples/show_work_cpu.toml`) with the sympy math
             reward; the policy learns from the reward alone that writing the steps out pays;
5. control:  SFT continued from the SFT policy for the same wall time as RL, so "RL beats SFT" is not
             just "more training beats less";
6. evaluate every stage on the same held-out problems (disjoint by arithmetic from every training set,
             checked before anything trains) with the same decoding, print a table with 95% confidence
             intervals, and write `results.json` and `curves.png` (pretraining loss, SFT loss, RL reward and
             held-out accuracy) to the demo's run directory (`runs/demo/`; a previous one is kept, renamed).

Overrides go to a stage by prefix (`--filter.`, `--pretrain.`, `--sft.`, `--rl.`); the rest are the
demo's own keys (`DemoConfig`). Every stage's run directory sits under the demo's, so each can be
inspected or resumed with its own command.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from pydantic import Field
from rich.console import Console
from rich.table import Table

from answerkey import driver, local
from answerkey.config import Config, ConfigError, EnvConfig, Section, load_config
from answerkey.envs import load_env
from answerkey.learner import checkpoint
from answerkey.metrics import MetricsLog
from answerkey.pretrain import pretrain, sft
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.pretrain.config import load_pretrain_config, load_sft_config
from answerkey.pretrain.filter import FilterConfig, filter_file, report
from answerkey.pretrain.synthetic_web import leaked, web_documents

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "demo.toml"
STAGES = ("filter", "pretrain", "sft", "rl")


class DemoConfig(Section):
    out_dir: str = "runs/demo"
    """The demo's run directory; every stage writes a subdirectory (an existing one is renamed, never
    deleted)."""
    seed: int = 0
    """Seed of the synthetic web, the conversations and every stage."""
    docs: int = Field(6000, ge=10)
    """Documents in the synthetic crawl, junk included."""
    junk_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of the crawl that is junk for the filter to remove (copies, cookie banners, French, spam, lorem
    ipsum)."""
    terse_fraction: float = Field(0.5, ge=0, le=1)
    """Share of the SFT demonstrations that give the bare answer instead of the worked steps."""
    eval_samples: int = Field(4, ge=1)
    """Sampled completions per held-out problem (at the RL temperature) besides the greedy one."""
    filter: str = "examples/filter_demo.toml"
    """Config of the web filter stage."""
    pretrain: str = "examples/pretrain_demo.toml"
    """Config of the pretraining stage (its corpus and run directory are set by the demo)."""
    sft: str = "examples/sft_demo.toml"
    """Config of the SFT stage and of the SFT-continued control."""
    rl: str = "examples/show_work_cpu.toml"
    """Config of the RL stage; its [env] is the world every stage is made from and evaluated on."""


def split_overrides(overrides: Sequence[str]) -> dict[str, list[str]]:
    """`--rl.run.steps=5` -> {"rl": ["--run.steps=5"]}; keys without a stage prefix are the demo's own."""
    out: dict[str, list[str]] = {s: [] for s in ("demo", *STAGES)}
    for item in overrides:
        head, _, rest = item.removeprefix("--").partition(".")
        stage = head if head in STAGES and rest else "demo"
        out[stage].append(f"--{rest}" if stage != "demo" else item)
    return out


def run(cfg: DemoConfig, stage_overrides: dict[str, list[str]],
        console: Console) -> dict[str, dict[str, float]]:
    out = fresh_dir(Path(cfg.out_dir), console)
    rl_cfg = load_config(cfg.rl, [f"--run.seed={cfg.seed}", *stage_overrides["rl"]])
    env = load_env(rl_cfg.env.path, rl_cfg.env.kwargs)
    test = env.problems("test")
    sampling = rl_cfg.rollout.sampling()
    timings: dict[str, float] = {}

    console.rule("[bold]1. the web: crawl, filter")
    t = time.perf_counter()
    docs = web_documents(env, cfg.docs, cfg.junk_fraction, cfg.seed)
    conversations = solution_conversations(env, cfg.terse_fraction, cfg.seed)
    if found := leaked([d["text"] for d in docs] + [m["content"] for c in conversations for m in c], env):
        raise RuntimeError(f"held-out problems leaked into the training data: {found[:5]}")
    write_jsonl(out / "web.jsonl", docs)
    write_jsonl(out / "conversations.jsonl", [{"messages": c} for c in conversations])
    console.print(report(filter_file(out / "web.jsonl", out / "web_kept.jsonl",
                                     load_config(cfg.filter, stage_overrides["filter"], FilterConfig),
                                     progress=True)))
    timings["web"] = time.perf_counter() - t

    console.rule("[bold]2. pretraining: tokenizer, base model")
    t = time.perf_counter()
    common = [f"--run.out_dir={out}", f"--train.seed={cfg.seed}"]
    base = pretrain.run(load_pretrain_config(cfg.pretrain, [f"--data.paths=['{out / 'web_kept.jsonl'}']",
                                                            "--run.name=pretrain", *common,
                                                            *stage_overrides["pretrain"]]), console)
    timings["pretrain"] = time.perf_counter() - t

    console.rule("[bold]3. SFT: an assistant")
    t = time.perf_counter()
    sft_args = [f"--data.paths=['{out / 'conversations.jsonl'}']", *common, *stage_overrides["sft"]]
    assistant = sft.run(load_sft_config(cfg.sft, [f"--model.path={base}", "--run.name=sft", *sft_args]),
                        console)
    timings["sft"] = time.perf_counter() - t
    results = {stage: evaluate_checkpoint(path, rl_cfg.env, test, sampling, cfg, console, stage)
               for stage, path in (("base", base), ("SFT", assistant))}

    console.rule("[bold]4. RL: GRPO with the math reward, through Ray")
    t = time.perf_counter()
    rl_path = run_rl(load_config(cfg.rl, [f"--model.path={assistant}", f"--run.out_dir={out}",
                                          "--run.name=rl", f"--run.seed={cfg.seed}", *stage_overrides["rl"]]))
    timings["rl"] = time.perf_counter() - t

    console.rule(f"[bold]5. control: SFT continued for the RL stage's {timings['rl']:.0f} s")
    t = time.perf_counter()
    steps = control_steps(out / "sft", timings["rl"])
    control = sft.run(load_sft_config(cfg.sft, [f"--model.path={assistant}", "--run.name=sft-control",
                                                 *sft_args, f"--train.steps={steps}",
                                                 f"--train.time_budget_s={timings['rl']}"]), console)
    timings["control"] = time.perf_counter() - t
    results["SFT continued (control)"] = evaluate_checkpoint(control, rl_cfg.env, test, sampling, cfg,
                                                             console, "control")
    results["RL"] = evaluate_checkpoint(rl_path, rl_cfg.env, test, sampling, cfg, console, "RL")

    console.rule("[bold]6. results")
    console.print(table(results, len(test), cfg.eval_samples))
    summary = {"held_out_problems": len(test), "eval_samples": cfg.eval_samples, "seconds": timings,
               "stages": results, "rl_minus_sft": results["RL"]["accuracy"] - results["SFT"]["accuracy"],
               "rl_minus_control": results["RL"]["accuracy"] - results["SFT continued (control)"]["accuracy"]}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot(out)
    console.print(f"run directory: {out} (results.json, curves.png; pretrain/ sft/ rl/ sft-control/ "
                  f"with their own metrics, checkpoints and model)")
    return results


def fresh_dir(path: Path, console: Console) -> Path:
    """`path`, empty; a previous demo there is renamed `<path>-<its time>` (nothing is deleted)."""
    if path.exists() and any(path.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
        kept = path.with_name(f"{path.name}-{stamp}")
        path.rename(kept)
        console.print(f"the previous demo in {path} is now {kept}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_rl(cfg: Config) -> Path:
    """`answerkey rl` on the local Ray (started here if needed, and stopped after); the final policy's
    directory."""
    started = not ray.is_initialized()
    try:
        driver.main(cfg)
    finally:
        if started:
            ray.shutdown()
    last = checkpoint.latest(Path(cfg.run.out_dir) / cfg.run.name / "checkpoints")
    if last is None or last.name != f"step_{cfg.run.steps:06d}":
        raise RuntimeError(f"the RL stage left no checkpoint of its last step {cfg.run.steps} (found {last})")
    return last / "model"


def control_steps(sft_dir: Path, seconds: float) -> int:
    """The control's schedule length: 1.5x the SFT steps that fit in `seconds` at the SFT stage's median step
    time, so that `train.time_budget_s` (= the RL stage's wall time), not the step count, ends it."""
    rows = [r for r in MetricsLog(sft_dir).read() if "time/step_s" in r]
    per_step = sorted(r["time/step_s"] for r in rows)[len(rows) // 2]
    return max(1, math.ceil(1.5 * seconds / per_step))


def evaluate_checkpoint(path: Path, env_cfg: EnvConfig, problems, sampling, cfg: DemoConfig, console: Console,
                        stage: str) -> dict[str, float]:
    """Greedy accuracy (with a 95% Wilson interval), mean sampled reward and response length on `problems`."""
    with console.status(f"evaluating {stage} on {len(problems)} held-out problems"):
        m = local.evaluate_checkpoint(str(path), env_cfg, problems, cfg.eval_samples, sampling, seed=cfg.seed)
    low, high = wilson(m["eval/greedy_reward"], len(problems))
    return {"accuracy": m["eval/greedy_reward"], "accuracy_low": low, "accuracy_high": high,
            "sampled_reward": m["eval/reward"], "response_length": m["eval/response_length"],
            "no_answer": m.get("eval/status/no_answer", 0.0)}


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `p` measured on `n` items."""
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def table(results: dict[str, dict[str, float]], n: int, samples: int) -> Table:
    t = Table(title=f"{n} held-out problems: greedy accuracy (95% CI) and mean reward of {samples} samples "
                    "at T = 1")
    for col in ("stage", "accuracy", "95% CI", "sampled reward", "mean length (tokens)"):
        t.add_column(col)
    for stage, m in results.items():
        t.add_row(stage, f"{m['accuracy']:.3f}", f"{m['accuracy_low']:.3f} - {m['accuracy_high']:.3f}",
                  f"{m['sampled_reward']:.3f}", f"{m['response_length']:.1f}")
    return t


def plot(out: Path) -> Path:
    """One PNG, four panels: pretraining loss, SFT loss (and the control's), RL reward, RL held-out
    accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(run: str, key: str) -> tuple[list[int], list[float]]:
        rows = ([r for r in MetricsLog(out / run).read() if key in r]
                if (out / run / "metrics.jsonl").exists() else [])
        return [r["step"] for r in rows], [r[key] for r in rows]

    panels = [("pretraining", [("pretrain", "pretrain/loss", "train"),
                               ("pretrain", "pretrain/heldout_loss", "held-out")], "loss"),
              ("SFT", [("sft", "sft/loss", "SFT"), ("sft", "sft/heldout_loss", "SFT held-out"),
                       ("sft-control", "sft/loss", "control (continued)")], "loss"),
              ("RL: training reward", [("rl", "reward/mean", "reward")], "reward"),
              ("RL: held-out", [("rl", "eval/greedy_reward", "greedy accuracy"),
                                ("rl", "eval/reward", "sampled reward")], "")]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (title, lines, ylabel) in zip(axes, panels, strict=True):
        for run, key, label in lines:
            x, y = series(run, key)
            ax.plot(x, y, marker="." if len(x) < 30 else None, label=label)
        ax.set(title=title, xlabel="step", ylabel=ylabel, yscale="log" if ylabel == "loss" else "linear")
        ax.legend(loc={"loss": "upper right", "reward": "upper left"}.get(ylabel, "lower right"))
    length = axes[2].twinx()  # the response length grows as the policy starts writing its steps out
    length.plot(*series("rl", "rollout/response_length"), color="tab:orange", label="response length")
    length.set_ylabel("response length (tokens)")
    length.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
    return out / "curves.png"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # the evaluations' torch: the 2 cores the demo is sized for
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = argv[0] if argv and not argv[0].startswith("--") else EXAMPLE
    parts = split_overrides(argv[1:] if argv and not argv[0].startswith("--") else argv)
    console = Console()
    try:
        run(load_config(path, parts["demo"], DemoConfig), parts, console)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
