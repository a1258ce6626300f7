"""One GRPO step (sample + learn) on CPU: ours against TRL's `GRPOTrainer`, side by side, with the compute
floor.

    pip install -e .[bench]                            # trl and its dependencies
    python benchmarks/grpo_step.py                 # 28m preset, fp32, 8 prompts x 8 completions x 64 tokens
    python benchmarks/grpo_step.py --precision bf16    # both sides bf16 autocast over fp32 master weights
    python benchmarks/grpo_step.py --steps 10 --json out.json

Protocol: the same freshly initialized Llama preset (two identical copies, one per side) and BPE
tokenizer; the same P problems per step (problems P*(k-1) .. P*k-1 of the synthetic world at step k, each
side renders them with the same chat template: checked to give identical token ids); G completions of
exactly `new_tokens` tokens (ours: `ignore_eos`; TRL: `min_new_tokens` in `generation_kwargs`);
temperature 1, no top-k/top-p; beta = 0 (no reference model); one optimizer step per batch; the same
deterministic reward of the completion text (a hash, so groups are never uniform and both sides train on
every token). Ours is `TorchEngine.generate` + `Learner.step` on one shared model in this process (what
`answerkey.local` and the demo run; no Ray), with the learner's defaults except those printed. TRL runs
its own `trainer.train()`; a callback runs one step of ours right after each TRL step, so the sides
alternate and a change of load hits both. A TRL step is timed from the end of our previous step to TRL's
`on_step_end` (its data loading, generation, scoring, forward/backward and optimizer step).

Reported: the median of steps 3..N per side (the first two warm up), the ratio TRL / ours, our phases
(rollout, learn), and the compute floor: 2N FLOPs per generated token + 6N per trained (completion) token
at the matmul peak measured in this run in the step's precision (`benchmarks/floor.py`) — our multiple of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time

import torch
import transformers
from floor import matmul_peak  # benchmarks/ is the script's folder, so on sys.path

from answerkey import chat
from answerkey.config import LearnerConfig
from answerkey.envs.base import Trajectory
from answerkey.envs.synthetic import SyntheticEnv
from answerkey.learner.learner import Learner
from answerkey.model import build_model, num_parameters
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.pretrain.tokenizer import train_bpe
from answerkey.rewards.score import Score, Status
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def reward(text: str) -> float:
    """A deterministic reward in [0, 1] from the completion text: varied, so no group is uniform."""
    return int(hashlib.blake2b(text.encode(), digest_size=2).hexdigest(), 16) / 65535


class Ours:
    """Our GRPO step in one process: the engine samples from the learner's model (nothing to sync)."""

    def __init__(self, model, tokenizer, problems, args):
        self.problems, self.P, self.G = problems, args.prompts, args.group
        self.sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, ignore_eos=True)
        self.cfg = LearnerConfig(lr=1e-5, drop_uniform_groups=False, precision=args.precision)
        self.engine = TorchEngine(model, tokenizer, seed=0, precision=args.precision)
        self.learner = Learner(model, self.cfg, self.sampling, total_steps=args.steps)
        self.tokenizer = tokenizer
        self.seconds: list[float] = []
        self.phases: list[tuple[float, float]] = []

    def step(self, k: int) -> None:
        """Step k (1-based) on problems P*(k-1) .. P*k-1."""
        batch = self.problems[self.P * (k - 1): self.P * k]
        prompts = [chat.prompt_ids(self.tokenizer, p.messages()) for p in batch]
        start = time.perf_counter()
        groups = self.engine.generate(prompts, self.G, self.sampling)
        trajectories = [[Trajectory.from_completion(p, c, Score(reward(c.text), Status.partial)) for c in g]
                        for p, g in zip(prompts, groups, strict=True)]
        mid = time.perf_counter()
        metrics = self.learner.step(trajectories)
        end = time.perf_counter()
        assert metrics["learner/skipped"] == 0.0 and all(len(c.token_ids) == self.sampling.max_new_tokens
                                                         for g in groups for c in g)
        self.seconds.append(end - start)
        self.phases.append((mid - start, end - mid))


def trl_config(args, out_dir: str):
    from trl import GRPOConfig

    fields = dict(output_dir=out_dir, use_cpu=True, bf16=args.precision == "bf16", fp16=False,
                  per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
                  gradient_accumulation_steps=1, max_completion_length=args.new_tokens,
                  generation_kwargs={"min_new_tokens": args.new_tokens}, temperature=1.0, top_p=1.0, top_k=0,
                  beta=0.0, num_iterations=1, loss_type="dapo", scale_rewards="group", epsilon=0.2,
                  epsilon_high=0.28, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
                  weight_decay=0.0, max_grad_norm=1.0, max_steps=args.steps, shuffle_dataset=False,
                  disable_dropout=True, logging_steps=10**6, save_strategy="no", report_to="none",
                  log_completions=False, dataloader_num_workers=0, seed=0)
    return GRPOConfig(**fields), fields


def run(args) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    env = SyntheticEnv(difficulty=2, train_size=2000, test_size=200)
    tokenizer = train_bpe([chat.render(c) for c in solution_conversations(env)], vocab_size=384)
    problems = list(env.problems("train"))[: args.prompts * args.steps]
    for p in problems:  # identical prompts on both sides
        rendered = tokenizer.apply_chat_template(p.messages(), add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"]
        assert rendered == chat.prompt_ids(tokenizer, p.messages())

    def make():
        return build_model(args.preset, len(tokenizer), chat.stop_token_ids(tokenizer),
                           pad_id=tokenizer.pad_token_id)

    ours = Ours(make(), tokenizer, problems, args)
    trl_model = make()
    n = num_parameters(trl_model)

    def trl_reward(prompts, completions, **_):
        return [reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    class Alternate(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.mark = 0.0

        def on_train_begin(self, *a, **k):
            self.mark = time.perf_counter()

        def on_step_end(self, _args, state, *a, **k):
            self.seconds.append(time.perf_counter() - self.mark)
            ours.step(state.global_step)
            self.mark = time.perf_counter()

    alternate = Alternate()
    cfg, fields = trl_config(args, tempfile.mkdtemp(prefix="answerkey-trl-"))
    dataset = Dataset.from_list([{"prompt": p.messages()} for p in problems])
    trainer = GRPOTrainer(model=trl_model, reward_funcs=[trl_reward], args=cfg, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[alternate])
    trainer.train()
    train_metrics = trainer._metrics["train"]
    lengths = train_metrics["completions/min_length"] + train_metrics["completions/max_length"]
    assert set(lengths) <= {float(args.new_tokens)}, f"TRL completion lengths {sorted(set(lengths))}"

    peak, shape, by_library = matmul_peak(trl_model, DTYPES[args.precision])
    tokens = args.prompts * args.group * args.new_tokens
    floor_s = (2 * n * tokens + 6 * n * tokens) / peak
    med = {"ours": statistics.median(ours.seconds[2:]), "trl": statistics.median(alternate.seconds[2:])}
    phases = {name: statistics.median(p[i] for p in ours.phases[2:])
              for i, name in enumerate(("rollout", "learn"))}
    return {"preset": args.preset, "parameters": n, "precision": args.precision,
            "threads": torch.get_num_threads(),
            "P": args.prompts, "G": args.group, "new_tokens": args.new_tokens, "steps": args.steps,
            "peak_flops": peak, "peak_shape": shape, "peak_by_library": by_library, "floor_s": floor_s,
            "median_s": med, "trl_over_ours": med["trl"] / med["ours"], "ours_x_floor": med["ours"] / floor_s,
            "trl_x_floor": med["trl"] / floor_s, "ours_phases_s": phases,
            "ours_s": ours.seconds, "trl_s": alternate.seconds,
            "trl_config": {k: v for k, v in fields.items() if k != "output_dir"},
            "ours_config": {"learner": ours.cfg.model_dump(), "engine_precision": args.precision},
            "loadavg": os.getloadavg(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                                     "trl": __import__("trl").__version__}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="28m")
    p.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--prompts", type=int, default=8, help="P problems per step")
    p.add_argument("--group", type=int, default=8, help="G completions per problem")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="steps per side; the median skips the first two")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.steps < 3:
        p.error("--steps must be >= 3 (the median skips the first two)")
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    r = run(args)
    print(f"torch {r['versions']['torch']}, transformers {r['versions']['transformers']}, "
          f"trl {r['versions']['trl']}; "
          f"{r['threads']} threads; {r['precision']} matmul peak {r['peak_flops'] / 1e9:.0f} GFLOP/s at "
          f"{r['peak_shape']} "
          f"({', '.join(f'{k} {v / 1e9:.0f}' for k, v in r['peak_by_library'].items())})\n"
          f"{r['preset']} ({r['parameters']:,} parameters), P={r['P']} x G={r['G']} x {r['new_tokens']} "
          "tokens, "
          f"median of steps 3..{r['steps']}; load {', '.join(f'{x:.2f}' for x in r['loadavg'])}\n"
          f"TRL GRPOConfig: {r['trl_config']}\n"
          f"floor {r['floor_s']:.2f} s (2N per generated + 6N per trained token)\n"
          f"  ours {r['median_s']['ours']:.2f} s ({r['ours_x_floor']:.2f}x floor; rollout "
          f"{r['ours_phases_s']['rollout']:.2f} s, learn {r['ours_phases_s']['learn']:.2f} s)\n"
          f"  TRL  {r['median_s']['trl']:.2f} s ({r['trl_x_floor']:.2f}x floor)\n"
          f"  TRL / ours: {r['trl_over_ours']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
