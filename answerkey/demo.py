"""`make demo`: a tiny policy learns arithmetic by practice, on a laptop CPU, in a few minutes.

    python -m answerkey.demo [examples/tiny_cpu.toml] [--run.steps=200 ...]

1. make a synthetic problem world (offline, seeded; held-out problems never seen in training),
2. train a BPE tokenizer and build a tiny Llama, warm it up on the answer format with SFT,
3. evaluate it on the held-out problems (mean reward of 16 samples per problem, and greedy),
4. run GRPO with the torch engine and the learner in one process,
5. evaluate again, print a before/after table, and write metrics.jsonl + curves.png to runs/demo-*/
   (the warm-up's loss goes to runs/demo-*/sft/metrics.jsonl + loss.png).

The full story (web text -> tokenizer -> pretraining -> SFT -> GRPO through Ray actors) replaces
steps 2 and 4 as those stages land; the numbers printed here are the README's "demo" row.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from answerkey.config import Config, ConfigError, describe_batch, load_config
from answerkey.envs import load_env
from answerkey.envs.base import Trajectory
from answerkey.learner import grpo
from answerkey.learner.learner import Learner
from answerkey.local import collect, evaluate
from answerkey.metrics import MetricsLog
from answerkey.pretrain.bootstrap import tiny_policy
from answerkey.pretrain.model import num_parameters
from answerkey.rewards import status_counts
from answerkey.rollout.torch_engine import TorchEngine

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cpu.toml"
WARMUP_STEPS = 2000  # SFT steps on worked solutions (constant lr) before RL
EVAL_SAMPLES = 16  # samples per held-out problem
MAX_REFILLS = 4  # extra batches drawn when every group of a batch scored alike


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())


def run(cfg: Config, console: Console) -> dict[str, dict[str, float]]:
    if cfg.model.path:
        raise ConfigError(f"model.path: the demo builds and warms up its own policy; leave it empty (got {cfg.model.path!r})")
    torch.manual_seed(cfg.run.seed)
    run_dir = Path(cfg.run.out_dir) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    log = MetricsLog(run_dir)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    env = load_env(cfg.env.path, cfg.env.kwargs)
    sampling = cfg.rollout.sampling()
    test = env.problems("test")

    sft_log = MetricsLog(run_dir / "sft")
    with progress() as bar:
        task = bar.add_task("SFT warm-up", total=WARMUP_STEPS, info="")

        def sft_step_done(step: int, metrics: dict[str, float]) -> None:
            sft_log.write(step + 1, metrics)
            bar.update(task, advance=1, info=f"loss {metrics['sft/loss']:.3f}")

        model, tokenizer = tiny_policy(env, sft_steps=WARMUP_STEPS, seed=cfg.run.seed, on_step=sft_step_done)
    sft_log.plot(["sft/loss"], run_dir / "sft" / "loss.png", "SFT warm-up on worked solutions")
    console.print(f"policy: Llama, {num_parameters(model):,} parameters, {len(tokenizer)}-token BPE vocabulary")
    engine = TorchEngine(model, tokenizer, seed=cfg.run.seed, precision=cfg.rollout.precision)
    results = {"before RL": evaluate(engine, env, tokenizer, test, sampling, EVAL_SAMPLES)}
    log.write(0, results["before RL"])
    console.print(f"[bold]GRPO:[/] {describe_batch(cfg)}")

    learner = Learner(model, cfg.learner, sampling, total_steps=cfg.run.steps)
    train = env.problems("train")
    rng = torch.Generator().manual_seed(cfg.run.seed)
    with progress() as bar:
        task = bar.add_task("GRPO", total=cfg.run.steps, info="")
        for step in range(1, cfg.run.steps + 1):
            start = time.perf_counter()
            groups, draws = [], 0
            # dynamic sampling: a batch whose groups all scored alike teaches nothing, so draw more problems
            while not any_informative(groups) and draws <= MAX_REFILLS:
                problems = [train[i] for i in torch.randperm(len(train), generator=rng)[: cfg.rollout.problems_per_step]]
                groups += collect(engine, env, tokenizer, problems, sampling, cfg.rollout.group_size)
                draws += 1
            rollout_s = time.perf_counter() - start
            scores = [t.score for g in groups for t in g]
            metrics = learner.step(groups) | status_counts(scores) | {
                "reward/mean": sum(s.value for s in scores) / len(scores),
                "rollout/refills": draws - 1, "time/rollout_s": rollout_s, "time/step_s": time.perf_counter() - start}
            log.write(step, metrics)
            bar.update(task, advance=1, info=f"reward {metrics['reward/mean']:.2f}")
    results["after RL"] = evaluate(engine, env, tokenizer, test, sampling, EVAL_SAMPLES)
    log.write(cfg.run.steps, results["after RL"])
    log.plot(["reward/mean", "learner/entropy", "learner/response_length"], run_dir / "curves.png", "GRPO on the synthetic world")
    model.save_pretrained(run_dir / "policy")
    tokenizer.save_pretrained(run_dir / "policy")
    console.print(table(results, len(test)))
    console.print(f"run directory: {run_dir} (metrics.jsonl, curves.png, policy/)")
    return results


def any_informative(groups: list[list[Trajectory]]) -> bool:
    """True when at least one group's rewards differ (a non-zero advantage to learn from)."""
    return bool(groups) and not bool(grpo.uniform_groups(torch.tensor([[t.score.value for t in g] for g in groups])).all())


def table(results: dict[str, dict[str, float]], n_problems: int) -> Table:
    t = Table(title=f"held-out problems ({n_problems}), {EVAL_SAMPLES} samples each at the training temperature")
    for col in ("stage", "mean reward", "greedy accuracy", "no answer", "mean length"):
        t.add_column(col)
    for stage, m in results.items():
        t.add_row(stage, f"{m['eval/reward']:.3f}", f"{m['eval/greedy_reward']:.3f}", f"{m['eval/status/no_answer']:.3f}",
                  f"{m['eval/response_length']:.1f}")
    return t


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv and not argv[0].startswith("--") else EXAMPLE
    overrides = argv[1:] if argv and not argv[0].startswith("--") else argv
    try:
        run(load_config(path, overrides), Console())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
