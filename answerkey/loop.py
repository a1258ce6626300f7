"""The RL loop: GRPO steps, verified weight sync, evaluation and checkpoints, on Ray actors or plain objects.

    loop = Loop(cfg, rollouts, learner, transport, run_dir)   # built by answerkey/driver.py or local.py
    loop.run()                                                # every step, eval and checkpoint of the config
    metrics = loop.train_step()                               # one step

One step (`Loop.train_step`):

    problems = the next P of the shuffled train split        the position is checkpointed
    groups   = G completions each, split across the workers   a dead worker is restarted, its share redone
    scores   = the env's reward, in killable processes         (P, G); raise -> error, hang -> timeout, both 0
    refill   = more rounds of P problems while fewer than P groups have mixed rewards, at most
               rollout.max_refill_rounds (DAPO's dynamic sampling); the batch: the first P informative groups
    metrics  = learner.step(groups)                            the GRPO update
    sync     = learner weights -> every worker (the transport), then verified: per-parameter checksums
               of what each engine holds, and the logprobs it reports for a seeded completion of its own
               against the learner's logprobs of that completion
    log every step; evaluate, write sample completions, checkpoint every N steps

This is the only RL loop: `answerkey rl` runs it on Ray actors (answerkey/driver.py), the learning test
and the GPU check run it on plain objects in one process (answerkey/local.py). Every call to a worker,
the learner or the transport goes through `answerkey.handles.call/get`, which treat both alike; starting
actors, placement and replacing a dead worker stay with whoever built the parts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from answerkey import chat
from answerkey.config import Config, ConfigError, EnvConfig, describe_batch
from answerkey.envs.base import MultiTurnEnv, Problem, Trajectory
from answerkey.evaluate import summarize
from answerkey.handles import ActorDied, CallFailed, call, get
from answerkey.learner import checkpoint, grpo
from answerkey.reward_workers import RewardWorkers
from answerkey.rewards import status_counts
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.vllm_engine import DTYPES
from answerkey.rundir import RunDir, progress_bar

# Engine vs learner logprobs of the check completion after a sync, largest gap over its tokens, by the dtype
# the engine computes them in. fp32: the engine protocol's bound (engine vs a full forward,
# tests/test_torch_engine.py; vLLM-CPU vs the learner, tests/vllm/): the two run different kernels (a cached
# decode step vs one forward), so a trained policy's fp32 rounding differs slightly, while a wrong weight or
# sampling setting moves the logprobs by orders of magnitude more. bf16 (vLLM on GPU with rollout.precision
# = "bf16"; the torch engine's check decodes in fp32): bf16's own rounding, ~0.05-0.15 on a 28M model, and a
# wrong temperature moves them by ~0.7.
LOGPROB_TOLERANCE = {"fp32": 1e-4, "bf16": 0.25}
PROBE_SEED, PROBE_TOKENS = 1234, 32  # the check completion: sampled with this seed, at most this long
SAMPLES_PER_LOG = 4  # decoded completions written to samples.jsonl every run.sample_every steps


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
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.size, generator=generator)
            chunk = order[offset : offset + count - len(out)].tolist()
            out += chunk
            self.position += len(chunk)
        return out


def prompts_for(tokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    """Token ids of each problem's conversation, ending with the assistant header."""
    return [chat.prompt_ids(tokenizer, p.messages()) for p in problems]


class Rollouts:
    """The rollout side: rollout workers sample completions, the reward workers score them.

    `workers` are RolloutWorkers (Ray actors or plain objects); `reward_workers` run the env's reward code in
    killable processes (answerkey/reward_workers.py). `restart(i)`, when set, replaces worker i after it died
    (the Loop sets it: a fresh actor loaded with the current weights); without it a dead worker ends the run.
    """

    def __init__(self, env, env_cfg: EnvConfig, tokenizer, workers: list[Any],
                 reward_workers: RewardWorkers):
        self.env, self.env_cfg, self.tokenizer = env, env_cfg, tokenizer
        self.workers, self.reward_workers = workers, reward_workers
        self.restart: Callable[[int], None] | None = None

    def collect(self, problems: Sequence[Problem], n: int,
                sampling: SamplingParams) -> tuple[list[list[Trajectory]], dict[str, float]]:
        """(P, n) scored trajectories, generated across the workers, and the phase timings."""
        start = time.perf_counter()
        chunks = split(len(problems), len(self.workers))
        if isinstance(self.env, MultiTurnEnv):  # the env runs the episode (and scores it) in the worker
            path, kwargs = self.env_cfg.path, self.env_cfg.kwargs
            parts = self._on_workers(chunks, lambda w, idx: call(w, "rollout", path, kwargs,
                                                                 [problems[i] for i in idx], n, sampling))
            groups = [g for part in parts for g in part]
            return groups, {"time/rollout_s": time.perf_counter() - start, "time/reward_s": 0.0}
        prompts = prompts_for(self.tokenizer, problems)
        parts = self._on_workers(chunks, lambda w, idx: call(w, "generate", [prompts[i] for i in idx], n,
                                                             sampling))
        completions = [g for part in parts for g in part]  # (P, n) Completion, in problem order
        t = time.perf_counter()
        scores = self.reward_workers.score([p for p in problems for _ in range(n)],
                                           [c.text for g in completions for c in g])
        groups = [[Trajectory.from_completion(prompts[i], c, scores[i * n + j]) for j, c in enumerate(g)]
                  for i, g in enumerate(completions)]
        return groups, {"time/rollout_s": t - start, "time/reward_s": time.perf_counter() - t}

    def evaluate(self, problems: Sequence[Problem], samples: int,
                 sampling: SamplingParams) -> dict[str, float]:
        """Held-out metrics: `samples` completions per problem (reward, pass@k, maj@k, length, statuses)
        and one greedy completion (`eval/greedy_reward`)."""
        start = time.perf_counter()
        sampled, _ = self.collect(problems, samples, sampling)
        greedy, _ = self.collect(problems, 1, replace(sampling, top_k=1))
        flat = [t for g in sampled for t in g]
        metrics = summarize([[t.text for t in g] for g in sampled], [[t.score for t in g] for g in sampled],
                            [[len(t.completion_ids) for t in g] for g in sampled],
                            getattr(self.env, "extract_answer", None))
        greedy_scores = [g[0].score.value for g in greedy]
        return metrics | {"eval/greedy_reward": sum(greedy_scores) / len(greedy_scores),
                          "eval/truncated_fraction": sum(t.truncated for t in flat) / len(flat),
                          "time/eval_s": time.perf_counter() - start}

    def _on_workers(self, chunks: list[list[int]], start: Callable[[Any, list[int]], Any]) -> list:
        """`start(worker, indices)` on every worker (in parallel on actors); a worker that died is restarted
        and its share redone."""
        refs = [start(w, idx) if idx else None for w, idx in zip(self.workers, chunks, strict=True)]
        out = []
        for i, ref in enumerate(refs):
            if ref is None:
                out.append([])
                continue
            try:
                out.append(get(ref))
            except ActorDied as exc:
                if self.restart is None:
                    raise
                Console(stderr=True).print(f"[yellow]rollout worker {i} died ({exc.__cause__!r:.80}); "
                                           "restarting it and redoing its share")
                self.restart(i)
                out.append(get(start(self.workers[i], chunks[i])))
        return out


class Loop:
    """GRPO steps over `rollouts` and `learner`; `transport` moves the weights, verified after each step.

    `learner` is a Learner (plain or Ray actor) or an FSDP learner group; `transport` a rollout.transfer
    Transport for these workers. `replace_worker(i, old, restarts)` returns a fresh worker i in place of
    `old` (Ray only: how a dead worker is replaced). `resume_from` is a checkpoint whose step, data
    position, learner state and worker RNG the loop continues from. `on_close()` runs at `close()`
    (the driver kills its actors there).
    """

    def __init__(self, cfg: Config, rollouts: Rollouts, learner: Any, transport: Any,
                 run: RunDir | None = None, replace_worker: Callable[[int, Any, int], Any] | None = None,
                 resume_from: checkpoint.Checkpoint | None = None, on_close: Callable[[], None] | None = None,
                 console: Console | None = None):
        self.cfg, self.rollouts, self.learner, self.transport = cfg, rollouts, learner, transport
        self.run_dir = run
        self.replace_worker, self.on_close, self.console = replace_worker, on_close, console or Console()
        if replace_worker is not None:
            rollouts.restart = self.restart_worker
        self.train = list(rollouts.env.problems("train"))
        self.sampling = cfg.rollout.sampling()
        self.sampler = ProblemSampler(len(self.train), cfg.run.seed)
        self.step, self.restarts, self.version = 0, 0, 0
        self.phase = "setup"  # now: rollout, learn, sync, eval or checkpoint (tests read it)
        self.probe_prompt = prompts_for(rollouts.tokenizer, self.train[:1])[0]  # the sync check's prompt
        # the dtype the engines hold and compute the check's logprobs in: vLLM runs in rollout.precision; the
        # torch engine keeps fp32 weights and decodes the check in fp32
        self.engine_precision = cfg.rollout.precision if cfg.rollout.engine == "vllm" else "fp32"
        self.engine_dtype = DTYPES[self.engine_precision]
        if resume_from is not None:
            self.step, self.sampler.position = resume_from.step, resume_from.run_state["sampler_position"]
            get(call(learner, "resume", str(resume_from.path)))
            states = resume_from.run_state["worker_rng"]
            for ref in [call(w, "set_rng_state", s) for w, s in zip(self.workers, states, strict=True)]:
                get(ref)
        self.nbytes = get(call(learner, "weights_nbytes"))
        self.sync()  # every engine starts from the learner's exact weights, verified

    @property
    def workers(self) -> list[Any]:
        return self.rollouts.workers

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        cfg, last = self.cfg.run, {}
        self.console.print(f"[bold]answerkey rl[/] {self.run_dir.path}: {describe_batch(self.cfg)}")
        if self.step == 0:
            self.run_dir.log(0, self.evaluate())
        with progress_bar(self.console) as bar:
            task = bar.add_task("GRPO", total=cfg.steps, completed=self.step, info="")
            while self.step < cfg.steps:
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
        """Step `self.step + 1`: rollout, score, learn, sync; returns its metrics."""
        self.step += 1
        start, self.phase = time.perf_counter(), "rollout"
        problems, groups, sampled, timing = self.collect_batch()
        self.phase = "learn"
        t = time.perf_counter()
        self._tell_workers("sleep")  # vLLM on a GPU releases its memory to the learner meanwhile
        metrics = get(call(self.learner, "step", groups))
        self._tell_workers("wake")
        timing["time/learn_s"] = time.perf_counter() - t
        self.phase = "sync"
        metrics |= self.sync()
        if self.run_dir and self.cfg.run.sample_every and self.step % self.cfg.run.sample_every == 0:
            self.run_dir.samples(self.step, sample_rows(problems, groups))
        flat = [t for g in sampled for t in g]  # every completion of the step, refill rounds included
        restarts = {"rollout/worker_restarts": self.restarts,
                    "reward/scorer_restarts": self.rollouts.reward_workers.restarts}
        return metrics | timing | status_counts(t.score for t in flat) | {
            "reward/mean": sum(t.score.value for t in flat) / len(flat),
            "rollout/response_length": sum(len(t.completion_ids) for t in flat) / len(flat),
            "rollout/truncated_fraction": sum(t.truncated for t in flat) / len(flat),
            **restarts, "time/step_s": time.perf_counter() - start}

    def collect_batch(self) -> tuple[list[Problem], list[list[Trajectory]], list[list[Trajectory]],
                                     dict[str, float]]:
        """The step's P problems and their groups, every group sampled, and the rollout's metrics.

        A round samples the next P problems of the shuffle, G completions each. With
        rollout.max_refill_rounds (DAPO's dynamic sampling) more rounds follow while fewer than P groups are
        informative (`informative`), up to that many; the batch is the first P informative groups, filled
        up with uniform ones when the rounds ran out (the learner drops those, and Dr.GRPO's normalizer
        stays P x G). The groups keep the order they were sampled in; what is left out is `groups_dropped`.
        """
        r = self.cfg.rollout
        problems: list[Problem] = []
        groups: list[list[Trajectory]] = []
        timing = {"time/rollout_s": 0.0, "time/reward_s": 0.0}
        useful: list[bool] = []
        rounds = 0
        while rounds == 0 or (sum(useful) < r.problems_per_step and rounds <= r.max_refill_rounds):
            rounds += 1
            batch = [self.train[i] for i in self.sampler.take(r.problems_per_step)]
            sampled, times = self.rollouts.collect(batch, r.group_size, self.sampling)
            timing = {k: timing[k] + times[k] for k in timing}
            problems += batch
            groups += sampled
            useful += informative(sampled, self.cfg)
        chosen = [i for i, u in enumerate(useful) if u][: r.problems_per_step]
        chosen += [i for i, u in enumerate(useful) if not u][: r.problems_per_step - len(chosen)]
        chosen.sort()
        return [problems[i] for i in chosen], [groups[i] for i in chosen], groups, timing | {
            "rollout/rounds": float(rounds), "rollout/groups_sampled": float(len(groups)),
            "rollout/groups_dropped": float(len(groups) - len(chosen)),
            "rollout/informative_groups": float(sum(useful[i] for i in chosen))}

    def evaluate(self, problems: Sequence[Problem] | None = None,
                 samples: int | None = None) -> dict[str, float]:
        """Held-out metrics through the same workers (default: `run.eval_problems`, `run.eval_samples`)."""
        cfg, self.phase = self.cfg.run, "eval"
        if problems is None:
            problems = list(self.rollouts.env.problems("test"))[: cfg.eval_problems or None]
        return self.rollouts.evaluate(problems, samples or cfg.eval_samples, self.sampling)

    def _tell_workers(self, method: str) -> None:
        """`method` on every worker, in parallel; a worker that died is left to the sync to replace."""
        for ref in [call(w, method) for w in self.workers]:
            with contextlib.suppress(ActorDied):
                get(ref)

    # -- weight sync ------------------------------------------------------------------------------

    def sync(self) -> dict[str, float]:
        """Push the learner's weights to every worker and verify what they hold.

        The weight version is the step that produced them (0: the initial policy or the resumed checkpoint).
        """
        start = time.perf_counter()
        self.transport.publish()
        self.version = self.step
        verified = self._load_and_verify(range(len(self.workers)), self.version)
        return {"sync/bytes": float(self.nbytes * len(self.workers)), "sync/verified": float(verified),
                "sync/version": float(self.version), "time/sync_s": time.perf_counter() - start}

    def _load_and_verify(self, indices: Sequence[int], version: int, replace_dead: bool = True) -> bool:
        refs = self.transport.push({i: self.workers[i] for i in indices}, version)
        expected = get(call(self.learner, "weights_checksum", self.engine_dtype))
        for i, ref in refs.items():
            try:
                held = get(ref)
            except ActorDied as exc:  # died since its last task: a replacement loads and verifies the weights
                if self.replace_worker is None:
                    raise
                if not replace_dead:  # a fresh replacement that died at once would be replaced forever
                    raise SyncError(f"weight sync {version}: the replacement of rollout worker {i} died "
                                    f"during its first load: {exc.__cause__!r}") from None
                self.restart_worker(i)
                continue
            except CallFailed as exc:  # the worker refused the update: name it and why
                raise SyncError(f"weight sync {version}: rollout worker {i} rejected the update: "
                                f"{exc.cause!r}") from None
            wrong = [name for name in expected if held.get(name) != expected[name]]
            wrong += sorted(set(held) - set(expected))
            if wrong:
                raise SyncError(f"weight sync {version}: rollout worker {i} holds different weights than the "
                                f"learner for {len(wrong)} parameter(s), first {wrong[0]!r}")
        if version % self.cfg.run.verify_every:
            return False
        # each engine samples a completion with a fixed seed (its own random stream untouched) and reports
        # its logprobs, which the learner recomputes: what the learner's ratios will be built on
        sampling = replace(self.sampling, seed=PROBE_SEED,
                           max_new_tokens=min(self.sampling.max_new_tokens, PROBE_TOKENS))
        tolerance = LOGPROB_TOLERANCE[self.engine_precision]
        for i in indices:
            sampled = get(call(self.workers[i], "probe", self.probe_prompt, sampling))
            reference = get(call(self.learner, "logprobs_of", self.probe_prompt, sampled.token_ids))
            gap = max(abs(a - b) for a, b in zip(sampled.logprobs, reference, strict=True))
            if not gap <= tolerance:
                raise SyncError(f"weight sync {version}: rollout worker {i}'s logprobs of its check "
                                f"completion differ from the learner's by {gap:.2e} "
                                f"(tolerance {tolerance:g}, {self.engine_precision})")
        return True

    def restart_worker(self, i: int) -> None:
        """Replace worker i (dead, or to be replaced) by a fresh one holding the current weights, verified."""
        self.restarts += 1
        self.workers[i] = self.replace_worker(i, self.workers[i], self.restarts)
        self._load_and_verify([i], self.version, replace_dead=False)

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self) -> Path:
        self.phase = "checkpoint"
        run_state = {"sampler_position": self.sampler.position,
                     "worker_rng": [get(r) for r in [call(w, "rng_state") for w in self.workers]]}
        path = get(call(self.learner, "save_checkpoint", str(self.run_dir.checkpoints), self.step, run_state,
                        self.cfg.model_dump_json(indent=2), self.cfg.run.keep_checkpoints))
        return Path(path)

    def close(self) -> None:
        """Stop the reward workers, then whatever the builder registered (the driver's actors)."""
        self.rollouts.reward_workers.close()
        if self.on_close is not None:
            self.on_close()


# -- resume ------------------------------------------------------------------------------------------


def resume_point(cfg: Config, run: RunDir, console: Console) -> checkpoint.Checkpoint | None:
    """The run's latest complete checkpoint (None: start from step 0); checks it was made with this config,
    removes partial checkpoint writes and cuts the run's JSONL files back to its step."""
    latest = checkpoint.latest(run.checkpoints)
    if latest is None:
        console.print(f"--resume: no checkpoint in {run.checkpoints}; starting from step 0")
        return None
    ckpt = checkpoint.load(latest)
    check_same_config(cfg, ckpt.config)
    checkpoint.clean_partial(run.checkpoints)
    run.truncate(ckpt.step)
    return ckpt


def check_same_config(cfg: Config, saved: dict) -> None:
    """A resumed run must use the checkpoint's config; only run.steps may change (to extend a run)."""
    now = cfg.model_dump(mode="json")
    diffs = [f"{section}.{key}" for section, fields in now.items() for key, value in fields.items()
             if saved.get(section, {}).get(key) != value and (section, key) != ("run", "steps")]
    if diffs:
        raise ConfigError(f"--resume: the config differs from the checkpoint's in {diffs}; "
                          "resume with the same settings")


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


def informative(groups: Sequence[Sequence[Trajectory]], cfg: Config) -> list[bool]:
    """Whether each group's rewards differ, as the learner will see them (after its overlong shaping)."""
    rewards = torch.tensor([[t.score.value for t in g] for g in groups], dtype=torch.float64)
    if cfg.learner.overlong_buffer:
        lengths = torch.tensor([[len(t.completion_ids) for t in g] for g in groups])
        rewards = rewards + grpo.overlong_penalty(lengths, cfg.rollout.max_new_tokens,
                                                  cfg.learner.overlong_buffer, cfg.learner.overlong_penalty)
    return (~grpo.uniform_groups(rewards)).tolist()


def every(step: int, interval: int, last: int) -> bool:
    """True on multiples of `interval` and on the last step (interval 0: only the last step)."""
    return step == last or (interval > 0 and step % interval == 0)


def sample_rows(problems: Sequence[Problem], groups: Sequence[Sequence[Trajectory]]) -> list[dict]:
    return [{"problem": p.id, "prompt": p.prompt, "answer": p.answer, "completion": g[0].text,
             "reward": g[0].score.value, "status": g[0].score.status.value, "detail": g[0].score.detail}
            for p, g in list(zip(problems, groups, strict=True))[:SAMPLES_PER_LOG]]
