"""Ray's own cost: the RL loop's step on Ray actors vs the same step on plain objects in one process, side
by side.

    python benchmarks/driver_overhead.py                        # 1.4m preset, 2 workers, 8 steps each side
    python benchmarks/driver_overhead.py --preset 28m --steps 6 --json out.json

Both sides start from the same freshly built Llama preset and tokenizer (saved to a temp dir), the same
synthetic problems, P x G and sampling (`examples/tiny_cpu.toml` settings unless overridden), and both run
`Loop.train_step` (rollout, reward workers, learner step, verified sync). The local side is `answerkey.local`
in this process with `threads` torch threads and one rollout worker; the Ray side is `answerkey.driver` with
`rollout.workers` workers of `threads / workers` threads each and the learner actor on `threads` threads
(the machine's cores split the same way). Ray's share of a step is
`1 - local / ray` on the medians of steps 3..N (the first two warm up), and the sync phase (weight push
through the object store + per-parameter checksums + the logprob check) is reported on its own.
The sides alternate step by step, so load changes hit both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import ray
import torch

from answerkey import chat, driver, local
from answerkey.config import load_config
from answerkey.envs import load_env
from answerkey.model import build_model
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.pretrain.tokenizer import train_bpe
from answerkey.rundir import RunDir


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="1.4m")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json")
    args, overrides = p.parse_known_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="answerkey-overhead-")
    cfg = load_config("examples/tiny_cpu.toml",
                      [f"--run.out_dir={tmp}", "--run.name=ray", f"--model.path={tmp}/policy",
                       f"--rollout.workers={args.workers}", f"--learner.threads={args.threads}",
                       f"--rollout.threads_per_worker={max(1, args.threads // args.workers)}",
                       f"--run.steps={args.steps}", "--run.eval_every=0", "--run.sample_every=0",
                       "--learner.drop_uniform_groups=false",  # an untrained policy scores 0: still train
                       *overrides])
    env = load_env(cfg.env.path, cfg.env.kwargs)
    tokenizer = train_bpe([chat.render(c) for c in solution_conversations(env)], vocab_size=384)
    model = build_model(args.preset, len(tokenizer), chat.stop_token_ids(tokenizer),
                        pad_id=tokenizer.pad_token_id)
    model.save_pretrained(f"{tmp}/policy")
    tokenizer.save_pretrained(f"{tmp}/policy")

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    on_ray = driver.start(cfg, RunDir.create(cfg))
    one_worker = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"workers": 1})})
    in_process = local.start(one_worker, model, tokenizer)
    ray_s, local_s, sync_s, phases = [], [], [], []
    try:
        for _ in range(args.steps):
            metrics = on_ray.train_step()
            ray_s.append(metrics["time/step_s"])
            sync_s.append(metrics["time/sync_s"])
            phases.append({k: metrics[f"time/{k}_s"] for k in ("rollout", "reward", "learn", "sync")})
            local_s.append(in_process.train_step()["time/step_s"])
    finally:
        on_ray.close()
        in_process.close()
        ray.shutdown()
    med = {name: statistics.median(v[2:] or v)
           for name, v in (("ray", ray_s), ("local", local_s), ("sync", sync_s))}
    result = {"preset": args.preset, "threads": args.threads, "workers": args.workers,
              "P": cfg.rollout.problems_per_step, "G": cfg.rollout.group_size, "median_s": med,
              "ray_share": 1 - med["local"] / med["ray"], "sync_share": med["sync"] / med["ray"],
              "ray_phases_s": {k: statistics.median(p[k] for p in (phases[2:] or phases)) for k in phases[0]}}
    phases_s = ", ".join(f"{k} {v:.2f}" for k, v in result["ray_phases_s"].items())
    print(f"{args.preset}, P={result['P']} x G={result['G']}, {args.threads} threads, {args.workers} "
          f"workers: step through Ray {med['ray']:.2f} s, in one process {med['local']:.2f} s -> Ray's share "
          f"{result['ray_share']:.1%}; sync + verification {med['sync']:.3f} s "
          f"({result['sync_share']:.1%} of the step)\n"
          f"Ray step phases (median s): {phases_s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
