"""`answerkey rl CONFIG`: GRPO through Ray actors, with verified weight sync, exact resume and survived faults.

    answerkey rl examples/tiny_cpu.toml --model.path=runs/demo/sft/model --run.name=first
    answerkey rl examples/tiny_cpu.toml --model.path=runs/demo/sft/model --run.name=first --resume

One step (`Driver.run`):

    problems = the next P of the shuffled train split        driver; the position is checkpointed
    groups   = G completions each, split across the workers   a dead worker is restarted, its share redone
    scores   = the env's reward, in killable processes         (P, G); raise -> error, hang -> timeout, both 0
    metrics  = learner.step(groups)                            the GRPO update, in the learner actor
    sync     = learner weights -> every worker (rollout.transport: object store, gloo or NCCL), then verified:
               per-parameter checksums of what each engine holds, and its logprobs of a fixed completion
    log every step; evaluate, write sample completions, checkpoint every N steps

Ray appears here, in `start_worker` and in learner/group.py only; the learner, workers and scorer are
plain classes. The learner is one actor, or `learner.world_size` FSDP2 ranks behind the same handle
(learner/group.py). On CPU the learner runs while the workers wait (the loop is synchronous), so it
reserves no cores (`num_cpus=0`); each worker reserves `rollout.threads_per_worker`. A learner that
dies ends the run (resume from the last checkpoint); a worker that dies is replaced.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import AutoTokenizer

from answerkey import chat, placement
from answerkey.config import Config, ConfigError, describe_batch
from answerkey.envs.base import MultiTurnEnv, Problem, Trajectory, load_env
from answerkey.evaluate import summarize
from answerkey.learner import checkpoint
from answerkey.learner import group as learner_group
from answerkey.local import prompts_for
from answerkey.rewards import status_counts
from answerkey.rollout.transfer import make_transport
from answerkey.rollout.worker import RolloutWorker
from answerkey.rundir import RunDir
from answerkey.scoring import ScorerPool

# engine vs learner logprobs of the fixed completion after a sync (fp32): the engine protocol's bound (engine vs a
# full forward, tests/test_torch_engine.py). The two run different kernels (a cached decode step vs one forward);
# on a trained policy their fp32 rounding reaches ~1e-5, while a wrong weight or sampling setting moves it >> 1e-3.
LOGPROB_TOLERANCE = 1e-4
SAMPLES_PER_LOG = 4  # decoded completions written to samples.jsonl every run.sample_every steps
RESOURCE_WAIT_S = 60.0  # how long start-up waits for CPUs still held by a previous run's exiting actors


class SyncError(RuntimeError):
    """The weights a rollout engine generates with are not the learner's."""


class ProblemSampler:
    """Problems in a fresh seeded shuffle each epoch; its state is one integer (the position)."""

    def __init__(self, size: int, seed: int, position: int = 0):
        if size == 0:
            raise ValueError("the env's train split has no problems")
        self.size, self.seed, self.position = size, seed, position

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            epoch, offset = divmod(self.position, self.size)
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            chunk = order[offset : offset + count - len(out)].tolist()
            out += chunk
            self.position += len(chunk)
        return out


class Driver:
    def __init__(self, cfg: Config, run: RunDir, resume: bool = False, console: Console | None = None):
        self.cfg, self.run_dir, self.console = cfg, run, console or Console()
        self.env = load_env(cfg.env.path, cfg.env.kwargs)
        self.train = list(self.env.problems("train"))
        latest = checkpoint.latest(run.checkpoints) if resume else None
        ckpt = checkpoint.load(latest) if latest is not None else None
        if resume and ckpt is None:
            self.console.print(f"--resume: no checkpoint in {run.checkpoints}; starting from step 0")
        if ckpt is not None:
            check_same_config(cfg, ckpt.config)
            checkpoint.clean_partial(run.checkpoints)
            run.truncate(ckpt.step)
        # a sharded (FSDP) checkpoint has no HF weights: everything starts from the initial policy, the
        # learner ranks load the checkpoint's shards, and the first sync gives the workers those weights
        self.model_path = str(ckpt.model_dir) if ckpt and not ckpt.sharded else cfg.model.path
        if not self.model_path or not (Path(self.model_path) / "config.json").exists():
            raise ConfigError(f"model.path: {self.model_path!r} is not a Hugging Face checkpoint directory (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.sampling = cfg.rollout.sampling()
        check_resources(cfg)
        self.plan = placement.make_plan(cfg)
        self.pg = placement.reserve(self.plan)
        self.learner = learner_group.start(cfg, self.model_path, self.plan, self.pg)  # N ranks behind one handle
        self.workers = [self._start_worker(i) for i in range(cfg.rollout.workers)]
        self.scorer = ScorerPool(cfg.env.path, cfg.env.kwargs, cfg.env.reward_processes, cfg.env.reward_timeout_s,
                                 cfg.env.reward_memory_gb)
        self.sampler = ProblemSampler(len(self.train), cfg.run.seed)
        self.step, self.restarts, self.version = 0, 0, 0
        self.probe = self._probe(self.train[0])
        self.phase = "setup"  # what the loop is doing now (tests and the progress bar read it)
        if ckpt is not None:
            self.step, self.sampler.position = ckpt.step, ckpt.run_state["sampler_position"]
            ray.get(self.learner.resume.remote(str(ckpt.path)))
            ray.get([w.set_rng_state.remote(s) for w, s in zip(self.workers, ckpt.run_state["worker_rng"], strict=True)])
        self.nbytes = ray.get(self.learner.weights_nbytes.remote())
        self.transport = make_transport(cfg.rollout.transport, self.learner)
        self.sync()  # every engine starts from the learner's exact weights, verified

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        cfg, last = self.cfg.run, {}
        self.console.print(f"[bold]answerkey rl[/] {self.run_dir.path}: {describe_batch(self.cfg)}")
        self.console.print(placement.describe(self.plan, self.cfg))
        if self.step == 0:
            self.run_dir.log(0, self.evaluate())
        with progress() as bar:
            task = bar.add_task("GRPO", total=cfg.steps, completed=self.step, info="")
            while self.step < cfg.steps:
                self.step += 1
                last = self.train_step()
                self.run_dir.log(self.step, last)
                if every(self.step, cfg.eval_every, cfg.steps):
                    self.run_dir.log(self.step, self.evaluate())
                if every(self.step, cfg.checkpoint_every, cfg.steps):
                    self.save()
                bar.update(task, completed=self.step, info=f"reward {last['reward/mean']:.3f}  "
                                                           f"step {last['time/step_s']:.1f}s")
        self.run_dir.plot()
        return last

    def train_step(self) -> dict[str, float]:
        start = time.perf_counter()
        self.phase = "rollout"
        problems = [self.train[i] for i in self.sampler.take(self.cfg.rollout.problems_per_step)]
        groups, timing = self.rollout(problems, self.cfg.rollout.group_size, self.sampling)
        self.phase = "learn"
        t = time.perf_counter()
        metrics = ray.get(self.learner.step.remote(groups))
        timing["time/learn_s"] = time.perf_counter() - t
        self.phase = "sync"
        metrics |= self.sync()
        if self.cfg.run.sample_every and self.step % self.cfg.run.sample_every == 0:
            self.run_dir.samples(self.step, sample_rows(problems, groups))
        flat = [t for g in groups for t in g]
        return metrics | timing | status_counts(t.score for t in flat) | {
            "reward/mean": sum(t.score.value for t in flat) / len(flat),
            "rollout/response_length": sum(len(t.completion_ids) for t in flat) / len(flat),
            "rollout/truncated_fraction": sum(t.truncated for t in flat) / len(flat),
            "rollout/worker_restarts": self.restarts, "reward/scorer_restarts": self.scorer.restarts,
            "time/step_s": time.perf_counter() - start}

    # -- rollout and scoring ----------------------------------------------------------------------

    def rollout(self, problems: Sequence[Problem], n: int, sampling) -> tuple[list[list[Trajectory]], dict[str, float]]:
        """(P, n) scored trajectories, generated across the workers, and the phase timings."""
        start = time.perf_counter()
        chunks = split(len(problems), len(self.workers))
        if isinstance(self.env, MultiTurnEnv):  # multi-turn: the env runs the episode (and scores it) in the worker
            cfg = self.cfg.env
            parts = self._on_workers(lambda w, idx: w.rollout.remote(cfg.path, cfg.kwargs, [problems[i] for i in idx], n, sampling), chunks)
            return [g for part in parts for g in part], {"time/rollout_s": time.perf_counter() - start, "time/reward_s": 0.0}
        prompts = prompts_for(self.tokenizer, problems)
        parts = self._on_workers(lambda w, idx: w.generate.remote([prompts[i] for i in idx], n, sampling), chunks)
        groups = [g for part in parts for g in part]  # (P, n) Completion, in problem order
        t = time.perf_counter()
        self.phase = "reward"
        scores = self.scorer.score([p for p in problems for _ in range(n)], [c.text for g in groups for c in g])
        trajectories = [[Trajectory.from_completion(prompts[i], c, scores[i * n + j]) for j, c in enumerate(g)]
                        for i, g in enumerate(groups)]
        return trajectories, {"time/rollout_s": t - start, "time/reward_s": time.perf_counter() - t}

    def _on_workers(self, call: Callable, chunks: list[list[int]]) -> list:
        """`call(worker, indices)` on every worker in parallel; a worker that died is restarted and its share redone."""
        refs = [call(w, idx) if idx else None for w, idx in zip(self.workers, chunks, strict=True)]
        out = []
        for i, ref in enumerate(refs):
            if ref is None:
                out.append([])
                continue
            try:
                out.append(ray.get(ref))
            except RayActorError as exc:
                self.console.print(f"[yellow]rollout worker {i} died ({type(exc).__name__}); restarting it and redoing its share")
                self.restart_worker(i)
                out.append(ray.get(call(self.workers[i], chunks[i])))
        return out

    def _start_worker(self, i: int, seed_offset: int = 0):
        options = placement.actor_options(self.plan, self.pg, self.plan.workers[i])
        return start_worker(self.cfg, self.model_path, i, options, seed_offset)

    def restart_worker(self, i: int) -> None:
        ray.kill(self.workers[i], no_restart=True)
        self.restarts += 1
        self.workers[i] = self._start_worker(i, seed_offset=self.restarts)
        self._load_and_verify([i], self.version)

    # -- weight sync ------------------------------------------------------------------------------

    def sync(self) -> dict[str, float]:
        """Push the learner's weights to every worker (`rollout.transport`) and verify what they hold.

        The weight version is the step that produced them (0: the initial policy or the resumed checkpoint).
        """
        start = time.perf_counter()
        self.transport.publish()
        self.version = self.step
        verified = self._load_and_verify(range(len(self.workers)), self.version)
        return {"sync/bytes": float(self.nbytes * len(self.workers)), "sync/verified": float(verified),
                "sync/version": float(self.version), "time/sync_s": time.perf_counter() - start}

    def _load_and_verify(self, indices: Sequence[int], version: int) -> bool:
        refs = self.transport.push({i: self.workers[i] for i in indices}, version)
        expected = ray.get(self.learner.weights_checksum.remote())
        for i, ref in refs.items():
            try:
                held = ray.get(ref)
            except RayActorError:  # died since its last task: its replacement loads and verifies these weights
                self.restart_worker(i)
                continue
            except RayTaskError as exc:
                raise SyncError(f"weight sync {version}: rollout worker {i} rejected the update: {exc.cause!r}") from None
            wrong = [name for name in expected if held.get(name) != expected[name]] + sorted(set(held) - set(expected))
            if wrong:
                raise SyncError(f"weight sync {version}: rollout worker {i} holds different weights than the learner "
                                f"for {len(wrong)} parameter(s), first {wrong[0]!r}")
        if version % self.cfg.run.verify_every:
            return False
        prompt, completion = self.probe
        reference = ray.get(self.learner.logprobs_of.remote(prompt, completion))
        for i in indices:
            got = ray.get(self.workers[i].logprobs_of.remote(prompt, completion, self.sampling))
            gap = max(abs(a - b) for a, b in zip(got, reference, strict=True))
            if not gap <= LOGPROB_TOLERANCE:
                raise SyncError(f"weight sync {version}: rollout worker {i}'s logprobs of the check completion differ from "
                                f"the learner's by {gap:.2e} (tolerance {LOGPROB_TOLERANCE:g})")
        return True

    def _probe(self, problem: Problem) -> tuple[list[int], list[int]]:
        """A fixed completion to compare engine and learner logprobs on: the gold answer and a stop token."""
        completion = self.tokenizer(problem.answer, add_special_tokens=False)["input_ids"]
        return prompts_for(self.tokenizer, [problem])[0], completion + chat.stop_token_ids(self.tokenizer)[:1]

    # -- evaluation and checkpoints ---------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Held-out problems through the same workers: `eval_samples` sampled completions each, and greedy."""
        self.phase = "eval"
        cfg, start = self.cfg.run, time.perf_counter()
        problems = list(self.env.problems("test"))[: cfg.eval_problems or None]
        sampled, _ = self.rollout(problems, cfg.eval_samples, self.sampling)
        greedy, _ = self.rollout(problems, 1, replace(self.sampling, top_k=1))
        metrics = summarize([[t.text for t in g] for g in sampled], [[t.score for t in g] for g in sampled],
                            [[len(t.completion_ids) for t in g] for g in sampled], getattr(self.env, "extract_answer", None))
        greedy_scores = [g[0].score.value for g in greedy]
        return metrics | {"eval/greedy_reward": sum(greedy_scores) / len(greedy_scores),
                          "time/eval_s": time.perf_counter() - start}

    def save(self) -> Path:
        self.phase = "checkpoint"
        run_state = {"sampler_position": self.sampler.position,
                     "worker_rng": ray.get([w.rng_state.remote() for w in self.workers])}
        cfg = self.cfg.run
        path = ray.get(self.learner.save_checkpoint.remote(str(self.run_dir.checkpoints), self.step, run_state,
                                                           self.cfg.model_dump_json(indent=2), cfg.keep_checkpoints))
        return Path(path)

    def close(self) -> None:
        self.scorer.close()
        self.learner.kill()
        for actor in self.workers:
            ray.kill(actor, no_restart=True)
        if self.pg is not None:
            ray.util.remove_placement_group(self.pg)


# -- actors ----------------------------------------------------------------------------------------


def start_worker(cfg: Config, model_path: str, index: int, options: dict, seed_offset: int = 0):
    seed = cfg.run.seed * 1_000 + index + 100 * seed_offset
    actor = ray.remote(max_restarts=0)(RolloutWorker).options(**options)
    return actor.remote(model_path, seed=seed, threads=cfg.rollout.threads_per_worker, engine=cfg.rollout.engine,
                        precision=cfg.rollout.precision)


# -- helpers ---------------------------------------------------------------------------------------


def split(count: int, parts: int) -> list[list[int]]:
    """Contiguous, near-equal index ranges: split(5, 2) == [[0, 1, 2], [3, 4]]."""
    size, extra = divmod(count, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(list(range(start, end)))
        start = end
    return out


def every(step: int, interval: int, last: int) -> bool:
    """True on multiples of `interval` and on the last step (interval 0: only the last step)."""
    return step == last or (interval > 0 and step % interval == 0)


def sample_rows(problems: Sequence[Problem], groups: Sequence[Sequence[Trajectory]]) -> list[dict]:
    return [{"problem": p.id, "prompt": p.prompt, "answer": p.answer, "completion": g[0].text,
             "reward": g[0].score.value, "status": g[0].score.status.value, "detail": g[0].score.detail}
            for p, g in list(zip(problems, groups, strict=True))[:SAMPLES_PER_LOG]]


def check_resources(cfg: Config, wait_s: float = RESOURCE_WAIT_S) -> None:
    """Fail at start-up, not as a silent hang of pending actors, when the workers cannot all be placed.

    CPUs held by actors that are still shutting down (a previous run in the same cluster) are waited for.
    """
    needed = cfg.rollout.workers * cfg.rollout.threads_per_worker
    have = ray.cluster_resources().get("CPU", 0)
    if needed > have:
        raise ConfigError(f"rollout.workers x rollout.threads_per_worker = {needed} CPUs, but the Ray cluster has {have:g}; "
                          "use fewer workers or threads")
    deadline = time.monotonic() + wait_s
    while (free := ray.available_resources().get("CPU", 0)) < needed:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the rollout workers need {needed} CPUs but only {free:g} of the cluster's {have:g} have been "
                               f"free for {wait_s:g} s (another run's actors hold the rest); wait for it or use fewer workers")
        time.sleep(0.2)


def check_same_config(cfg: Config, saved: dict) -> None:
    """A resumed run must use the checkpoint's config; only run.steps may change (to extend a run)."""
    now = cfg.model_dump(mode="json")
    diffs = [f"{section}.{key}" for section, fields in now.items() for key, value in fields.items()
             if saved.get(section, {}).get(key) != value and (section, key) != ("run", "steps")]
    if diffs:
        raise ConfigError(f"--resume: the config differs from the checkpoint's in {diffs}; resume with the same settings")


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())


def init_ray() -> None:
    """Connect to the cluster in RAY_ADDRESS (a submitted job), or start a local one without the dashboard."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local dev cluster; clusters set their own auth
        ray.init(include_dashboard=False)


def main(cfg: Config, resume: bool = False) -> dict[str, float]:
    init_ray()
    run = RunDir.create(cfg, resume=resume)
    driver = Driver(cfg, run, resume=resume)
    try:
        return driver.run()
    finally:
        driver.close()
        run.close()
