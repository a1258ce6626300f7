"""The `answerkey` command: one subcommand per job. `answerkey --help` lists them.

    answerkey config examples/tiny_cpu.toml --learner.lr=1e-5   # validate; resolved config + batch arithmetic
    answerkey config --docs                                      # every key with its default and doc
    answerkey env answerkey.envs.synthetic:SyntheticEnv --kwargs '{"difficulty": 3}' -n 3

    answerkey rl examples/tiny_cpu.toml --model.path=runs/demo/sft/model --run.name=r1 [--resume]
    answerkey submit examples/math_8gpu.toml --run.out_dir=/shared/runs [--address http://head:8265]
    answerkey eval runs/r1/checkpoints/step_000010/model --env answerkey.envs.synthetic:SyntheticEnv --n 8
    answerkey export runs/r1/checkpoints/step_000010 runs/r1/hf-10   # sharded (FSDP) checkpoint -> HF dir

    answerkey tokenize --tokenizer runs/base/tokenizer "What is 2 + 3?"
    answerkey pretrain examples/pretrain_tiny.toml --data.paths="['corpus.jsonl']" --run.name=base [--resume]
    answerkey sft examples/sft_tiny.toml --model.path=runs/base/model --data.paths="['chats.jsonl']"
    answerkey sample runs/base/model "Alice has" -n 3;  answerkey chat runs/sft/model
    answerkey filter crawl.jsonl kept.jsonl --config examples/filter_demo.toml
    answerkey demo [examples/demo.toml] --rl.run.steps=20         # = make demo: every stage above, in order

Errors a user can fix (bad config, bad dataset or corpus row, bad env path, a tokenizer without
the special tokens) print one clear message and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from answerkey.config import ConfigError, describe_batch, field_docs, load_config

console = Console()


def cmd_config(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.docs:
        table = Table("key", "default", "what it does", title="answerkey config keys")
        for key, default, doc in field_docs():
            table.add_row(key, default, doc)
        console.print(table)
        return 0
    cfg = load_config(args.config, overrides)
    console.print_json(cfg.model_dump_json())
    console.print(f"[bold]batch:[/] {describe_batch(cfg)}")
    return 0


def cmd_env(args: argparse.Namespace, overrides: list[str]) -> int:
    """Show a few problems of an env and check that its reward credits the worked solutions."""
    from answerkey.envs import load_env, score_batch
    from answerkey.rewards import status_counts

    if overrides:
        raise ConfigError(f"`answerkey env` takes no overrides, got {overrides}")
    env = load_env(args.path, json.loads(args.kwargs))
    problems = list(env.problems(args.split))
    console.print(f"{args.path} ({args.split}): {len(problems)} problems")
    for p in problems[: args.n]:
        console.print(f"[bold]{p.id}[/]  answer={p.answer!r}\n{p.prompt}\n")
    solved = [p for p in problems if p.meta.get("solution")]
    if solved and hasattr(env, "score"):
        scores = score_batch(env, solved, [p.meta["solution"] for p in solved])
        counts = {k.removeprefix("reward/status/"): v for k, v in status_counts(scores).items() if v}
        mean = sum(map(float, scores)) / len(scores)
        console.print(f"reward of the worked solutions: mean {mean:.3f}, statuses {counts}")
    return 0


def cmd_rl(args: argparse.Namespace, overrides: list[str]) -> int:
    from answerkey import driver

    cfg = load_config(args.config, overrides)
    metrics = driver.main(cfg, resume=args.resume)
    console.print({k: round(v, 4) for k, v in metrics.items()
                   if k in ("reward/mean", "learner/loss", "time/step_s")})
    return 0


def cmd_submit(args: argparse.Namespace, overrides: list[str]) -> int:
    from answerkey import submit

    return submit.submit(args.config, overrides, address=args.address, wait=not args.no_wait,
                         print_fn=lambda line: console.print(line, highlight=False, markup=False))


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    """pass@k, maj@k, mean reward and greedy accuracy of a checkpoint on an env's split, in one process."""
    from answerkey import local
    from answerkey.config import EnvConfig
    from answerkey.envs import load_env
    from answerkey.rollout.engine import SamplingParams

    if overrides:
        raise ConfigError(f"`answerkey eval` takes no overrides, got {overrides}")
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    env_cfg = EnvConfig(path=args.env, kwargs=json.loads(args.kwargs), reward_timeout_s=args.reward_timeout)
    problems = list(load_env(env_cfg.path, env_cfg.kwargs).problems(args.split))[: args.limit or None]
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    metrics = local.evaluate_checkpoint(args.checkpoint, env_cfg, problems, args.n, sampling, seed=args.seed)
    print(json.dumps({"checkpoint": args.checkpoint, "env": args.env, "split": args.split,
                      "problems": len(problems), "n": args.n} | metrics, indent=2))
    return 0


def cmd_filter(args: argparse.Namespace, overrides: list[str]) -> int:
    """FineWeb-style filtering of a JSONL of web docs (answerkey/pretrain/filter.py)."""
    from answerkey.pretrain.filter import FilterConfig, filter_file, report

    cfg = load_config(args.config, overrides, FilterConfig)
    console.print(report(filter_file(args.input, args.output, cfg, progress=True)))
    return 0


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    import torch

    from answerkey.learner import dcp

    if overrides:
        raise ConfigError(f"`answerkey export` takes no overrides, got {overrides}")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    out = dcp.export(args.checkpoint, args.out, dtype=dtype)
    console.print(f"exported {args.checkpoint} -> {out} "
                  f"(config.json, model.safetensors, tokenizer; {args.dtype})")
    return 0


def _stage_config(args: argparse.Namespace, overrides: list[str], stage: str):
    from answerkey.pretrain import config

    schema = config.PretrainConfig if stage == "pretrain" else config.SFTConfig
    if args.docs:
        table = Table("key", "default", "what it does", title=f"answerkey {stage} config keys")
        for key, default, doc in field_docs(schema):
            table.add_row(key, default, doc)
        console.print(table)
        return None
    return load_config(args.config, overrides, schema)


def cmd_pretrain(args: argparse.Namespace, overrides: list[str]) -> int:
    from answerkey.pretrain import pretrain

    cfg = _stage_config(args, overrides, "pretrain")
    if cfg is not None:
        console.print(f"model: {pretrain.run(cfg, console, resume=args.resume)}")
    return 0


def cmd_sft(args: argparse.Namespace, overrides: list[str]) -> int:
    from answerkey.pretrain import sft

    cfg = _stage_config(args, overrides, "sft")
    if cfg is not None:
        console.print(f"model: {sft.run(cfg, console, resume=args.resume)}")
    return 0


def cmd_tokenize(args: argparse.Namespace, overrides: list[str]) -> int:
    from answerkey.pretrain import sample
    from answerkey.pretrain.tokenizer import load_tokenizer

    if overrides:
        raise ConfigError(f"`answerkey tokenize` takes one text argument, got extra {overrides}")
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else sample.default_tokenizer()
    console.print(sample.token_view(tokenizer, args.text), highlight=False)
    return 0


def _sampling(args: argparse.Namespace):
    from answerkey.rollout.engine import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)


def cmd_sample(args: argparse.Namespace, overrides: list[str]) -> int:
    from answerkey.pretrain import sample

    if overrides:
        raise ConfigError(f"`answerkey sample` takes CKPT and one prefix, got extra {overrides}")
    texts = sample.continue_text(sample.engine(args.checkpoint, args.seed), args.prefix, args.n,
                                 _sampling(args))
    for k, text in enumerate(texts):
        console.print(f"[bold]--- sample {k + 1}[/]")
        console.print(args.prefix + text, markup=False, highlight=False)
    return 0


def cmd_chat(args: argparse.Namespace, overrides: list[str]) -> int:
    from answerkey.pretrain import sample

    if overrides:
        raise ConfigError(f"`answerkey chat` takes only CKPT and options, got extra {overrides}")
    tty = sys.stdin.isatty()
    if tty:
        console.print("type a message; /reset starts over, /quit (or Ctrl-D) leaves")
    sample.chat_loop(sample.engine(args.checkpoint, args.seed), sys.stdin,
                     lambda line: console.print(line, markup=False, highlight=False), _sampling(args),
                     args.system, ask=(lambda: console.print("you> ", end="")) if tty else (lambda: None))
    return 0


def _add_stage(sub, name: str, help_text: str, run) -> None:
    p = sub.add_parser(name, help=help_text,
                       description=f"{help_text}. CONFIG (TOML) with dotted overrides like "
                                   f"--train.steps=100; --docs lists the keys.")
    p.add_argument("config", nargs="?", help=f"TOML file, e.g. examples/{name}_tiny.toml")
    p.add_argument("--resume", action="store_true",
                   help="continue run.out_dir/run.name from its latest checkpoint")
    p.add_argument("--docs", action="store_true", help="list every key with its default and doc")
    p.set_defaults(run=run)


def _add_sampling(p: argparse.ArgumentParser, max_new_tokens: int, temperature: float) -> None:
    p.add_argument("checkpoint",
                   help="Hugging Face checkpoint directory (model + tokenizer), e.g. runs/base/model")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=temperature)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    from answerkey import demo

    return demo.main(([args.config] if args.config else []) + overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="answerkey",
                                     description="RL from verifiable rewards, from pretraining to GRPO.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="validate a config, print it resolved with the batch arithmetic",
                       description="Validate CONFIG (TOML) with dotted overrides like --learner.lr=1e-6.")
    p.add_argument("config", nargs="?", help="TOML file in examples/ (defaults only when omitted)")
    p.add_argument("--docs", action="store_true", help="list every key with its default and doc")
    p.set_defaults(run=cmd_config)

    p = sub.add_parser("env", help="preview an env's problems and check its reward on the worked solutions")
    p.add_argument("path", help="dotted path, e.g. answerkey.envs.synthetic:SyntheticEnv")
    p.add_argument("--kwargs", default="{}", help="JSON object of constructor arguments")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("-n", type=int, default=3, help="problems to print")
    p.set_defaults(run=cmd_env)

    p = sub.add_parser("rl", help="GRPO through Ray actors (rollout workers, learner, reward processes)",
                       description="Run GRPO with CONFIG (TOML) and dotted overrides like --run.steps=50.")
    p.add_argument("config", help="TOML file, e.g. examples/tiny_cpu.toml")
    p.add_argument("--resume", action="store_true",
                   help="continue run.out_dir/run.name from its latest complete checkpoint")
    p.set_defaults(run=cmd_rl)

    p = sub.add_parser("submit",
                       help="run `answerkey rl CONFIG` as a Ray job on a cluster and stream its logs",
                       description="Submit `answerkey rl CONFIG [overrides]` with `ray job submit` "
                                   "semantics: this directory as working_dir (no .venv/, runs/), no pip "
                                   "step. Exit 0 only if the job SUCCEEDED.")
    p.add_argument("config", help="TOML file inside this directory, e.g. examples/math_8gpu.toml")
    p.add_argument("--address", default=None,
                   help="Ray dashboard address (default: $RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--no-wait", action="store_true",
                   help="return once submitted instead of following the logs")
    p.set_defaults(run=cmd_submit)

    p = sub.add_parser("filter",
                       help="FineWeb-style filtering of web docs (JSONL with text, url) "
                            "with a count per rule",
                       description="Filter IN (JSONL rows with 'text', optional 'url') into OUT; thresholds "
                                   "from --config (TOML, one table per stage) and dotted overrides like "
                                   "--c4.min_sentences=3.")
    p.add_argument("input", help="JSONL of documents")
    p.add_argument("output", help="JSONL of the kept documents (written atomically)")
    p.add_argument("--config", default=None, help="TOML with [url], [english], [gopher_quality], ... tables")
    p.set_defaults(run=cmd_filter)

    p = sub.add_parser("export", help="write a sharded (FSDP) checkpoint as a Hugging Face directory",
                       description="Gather the DCP shards of CHECKPOINT (checkpoints/step_N of a run with "
                                   "learner.world_size > 1) into OUT: config.json, safetensors, tokenizer.")
    p.add_argument("checkpoint",
                   help="a checkpoint directory with dcp/ and hf/, e.g. runs/r1/checkpoints/step_000010")
    p.add_argument("out", help="new directory for the Hugging Face checkpoint")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of the saved weights")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("demo",
                       help="the whole story on a CPU: crawl, filter, pretrain, SFT, GRPO, a control, "
                            "evaluation",
                       description="Run `make demo` (answerkey/demo.py) with CONFIG (default "
                                   "examples/demo.toml); overrides go to a stage by prefix: "
                                   "--pretrain.train.steps=300 --rl.run.steps=20 --docs=3000.")
    p.add_argument("config", nargs="?", help="TOML file, e.g. examples/demo.toml")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("tokenize", help="show the tokens of a text: pieces and ids (a token viewer)")
    p.add_argument("text")
    p.add_argument("--tokenizer",
                   help="tokenizer directory (default: one trained on the synthetic world in a second)")
    p.set_defaults(run=cmd_tokenize)

    _add_stage(sub, "pretrain", "pretrain a base model on a text corpus (tokenizer, shards, next-token loss)",
               cmd_pretrain)
    _add_stage(sub, "sft", "fine-tune a checkpoint on conversations (loss on assistant tokens)", cmd_sft)

    p = sub.add_parser("sample", help="continue a document prefix with a checkpoint (stochastic)")
    _add_sampling(p, max_new_tokens=64, temperature=1.0)
    p.add_argument("prefix", nargs="?", default="", help="start of the document (default: empty)")
    p.add_argument("-n", type=int, default=3, help="continuations")
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("chat", help="talk to a checkpoint: a REPL on stdin that renders the chat template")
    _add_sampling(p, max_new_tokens=256, temperature=0.7)
    p.add_argument("--system", default="", help="system message at the start of the conversation")
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("eval", help="pass@1, pass@k, maj@k and greedy accuracy of a checkpoint on an env",
                       description="Sample --n completions per problem of the env's split with a "
                                   "checkpoint (one process, no Ray), score them in reward worker processes "
                                   "and print the metrics (answerkey/evaluate.py) as JSON.")
    p.add_argument("checkpoint",
                   help="Hugging Face checkpoint directory (e.g. runs/x/checkpoints/step_000100/model)")
    p.add_argument("--env", required=True, help="dotted path of the env, e.g. answerkey.envs.gsm8k:GSM8KEnv")
    p.add_argument("--kwargs", default="{}", help="JSON object of env constructor arguments")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=int, default=8, help="samples per problem")
    p.add_argument("--limit", type=int, default=0, help="first L problems only (0 = all)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--reward-timeout", type=float, default=30.0,
                   help="seconds per completion before its reward process is killed")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    try:
        return args.run(args, overrides)
    except (ConfigError, ValueError, ImportError, TypeError, FileNotFoundError, FileExistsError) as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)  # soft: paths stay whole
        return 2


if __name__ == "__main__":
    sys.exit(main())
