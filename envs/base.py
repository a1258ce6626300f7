"""What an environment is: problems to practise on and a reward for each completion.

A user writes one file and points the config at it by dotted path, no registry:

    # my_pkg/my_env.py
    class MyEnv:
        def problems(self, split):                       # "train" or "test"
            return [Problem(id="q1", prompt="What is 2 + 3?", answer="5")]
        def score(self, problem, completion):            # completion: the decoded text
            return answerkey.rewards.exact.score(completion, problem.answer)

    # config: [env] path = "my_pkg.my_env:MyEnv", kwargs = {...}

`score_batch` is optional: `Env.score_batch` below is the default (one `score` call per completion,
exceptions turned into `Status.error` and counted). An env whose checker has a process pool (the
sympy and sandbox checkers) implements `score_batch` itself and enforces its own per-item kill;
the RL loop's reward workers only add a whole-batch backstop.

The multi-turn form (`MultiTurnEnv`) owns the rollout: it calls `generate(token_ids)` as often as it
likes, inserts its own turns (tool results, feedback), and returns a `Trajectory` of token ids with
a per-token loss mask (1 = sampled by the policy, 0 = inserted by the env). The learner trains on
those exact ids; text is never re-tokenized. Single-turn completions become the same `Trajectory`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from answerkey import chat
from answerkey.rewards import Score, Status
from answerkey.rollout.engine import Completion

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")


@dataclass(frozen=True)
class Problem:
    """One thing to practise: a prompt and the gold answer its reward checks against."""

    id: str  # stable across runs and machines, e.g. "gsm8k/test/17"
    prompt: str  # the user's message
    answer: str  # gold final answer, in the form the env's checker expects
    meta: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"solution": worked solution}
    system: str | None = None  # optional system message before the prompt

    def messages(self) -> list[dict[str, str]]:
        """The conversation that asks this problem (the rollout appends the assistant header)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": self.prompt}]


@runtime_checkable
class Env(Protocol):
    """A single-turn environment: the RL loop samples, then calls `score_batch`."""

    def problems(self, split: Split) -> Sequence[Problem]: ...

    def score(self, problem: Problem, completion: str) -> Score: ...

    def score_batch(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        """Default: `score` each item; a raise becomes `Status.error` naming the problem."""
        return [score_one(self, p, c) for p, c in zip(problems, completions, strict=True)]


def score_one(env: Env, problem: Problem, completion: str) -> Score:
    """`env.score` with an exception turned into a counted `Status.error` (the env boundary)."""
    try:
        result = env.score(problem, completion)
    except Exception as exc:  # noqa: BLE001 - user env code: any failure is this item's error
        return Score.failed(Status.error, f"{type(env).__name__}.score raised on {problem.id}: {exc!r}"[:500])
    if not isinstance(result, Score):
        return Score.failed(Status.error,
                            f"{type(env).__name__}.score returned {type(result).__name__}, not Score")
    return result


def score_batch(env: Env, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
    """Score through the env's own `score_batch` when it has one, else item by item."""
    if len(problems) != len(completions):
        raise ValueError(f"score_batch: {len(problems)} problems but {len(completions)} completions")
    method = getattr(env, "score_batch", None)
    scores = method(problems, completions) if method else Env.score_batch(env, problems, completions)
    if len(scores) != len(problems) or not all(isinstance(s, Score) for s in scores):
        raise TypeError(f"{type(env).__name__}.score_batch must return one Score per completion "
                        f"({len(problems)})")
    return scores


# ---------------------------------------------------------------------------------------------
# Multi-turn: the env owns the rollout.

GenerateFn = Callable[[Sequence[int]], Completion]  # token ids so far -> one sampled completion


@dataclass
class Trajectory:
    """Token ids of one rollout, ready for the learner. All per-token lists align with completion_ids."""

    prompt_ids: list[int]  # the initial prompt; never trained on
    completion_ids: list[int]  # model turns and env turns, interleaved, exactly as fed to the model
    loss_mask: list[int]  # 1 = sampled by the policy, 0 = inserted by the env
    logprobs: list[float]  # the engine's logprob of each token (0.0 where loss_mask is 0)
    score: Score
    finish_reason: str  # of the last model turn: "stop" or "length"
    text: str = ""  # decoded completion for logs

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        if len(self.loss_mask) != n or len(self.logprobs) != n:
            raise ValueError(
                f"Trajectory: completion_ids ({n}), loss_mask ({len(self.loss_mask)}) and "
                f"logprobs ({len(self.logprobs)}) must have the same length"
            )
        if not self.prompt_ids:
            raise ValueError("Trajectory: prompt_ids is empty")

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @classmethod
    def from_completion(cls, prompt_ids: Sequence[int], completion: Completion, score: Score) -> Trajectory:
        """The single-turn case: every completion token was sampled by the policy."""
        n = len(completion.token_ids)
        return cls(list(prompt_ids), list(completion.token_ids), [1] * n, list(completion.logprobs), score,
                   completion.finish_reason, completion.text)


class TurnBuilder:
    """Builds a multi-turn `Trajectory` token by token, so env turns never re-tokenize model output.

        turns = TurnBuilder(tokenizer, problem.messages())
        reply = turns.generate(generate)                 # appends sampled ids (mask 1)
        turns.add_message("user", "Not quite. Try again.")  # appends template tokens (mask 0)
        reply = turns.generate(generate)
        return turns.finish(score)
    """

    def __init__(self, tokenizer, messages: Sequence[chat.Message]):
        self.tokenizer = tokenizer
        self.prompt_ids = chat.prompt_ids(tokenizer, messages)
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason = "stop"

    def generate(self, generate: GenerateFn) -> Completion:
        if self.finish_reason == "length":
            raise RuntimeError("the last model turn hit max_new_tokens; "
                               "end the episode instead of continuing")
        completion = generate(self.prompt_ids + self.ids)
        self.ids += completion.token_ids
        self.mask += [1] * len(completion.token_ids)
        self.logprobs += completion.logprobs
        self.finish_reason = completion.finish_reason
        return completion

    def add_message(self, role: str, content: str) -> None:
        """Append an env turn and the next assistant header (the newline after `<|im_end|>` included)."""
        if self.finish_reason == "length":
            raise RuntimeError("cannot add a turn after a truncated model turn (no <|im_end|> was sampled)")
        text = "\n" + chat.render([{"role": role, "content": content}], add_generation_prompt=True)
        chat.check_messages([{"role": role, "content": content}], where="env message")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        self.ids += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def finish(self, score: Score) -> Trajectory:
        if not any(self.mask):
            raise RuntimeError("a trajectory needs at least one model turn")
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        return Trajectory(self.prompt_ids, self.ids, self.mask, self.logprobs, score, self.finish_reason,
                          text)


@runtime_checkable
class MultiTurnEnv(Protocol):
    """An env that owns the rollout: it generates, answers, and scores a whole episode."""

    def problems(self, split: Split) -> Sequence[Problem]: ...

    def rollout(self, problem: Problem, generate: GenerateFn, tokenizer) -> Trajectory: ...


# ---------------------------------------------------------------------------------------------
# Loading by dotted path.


def load_object(path: str, what: str = "object") -> Any:
    """`"pkg.module:Name"` -> the object. Errors name the path and what was wrong."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} path {path!r} must look like 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"{what} path {path!r}: cannot import module {module_name!r}: {exc}") from exc
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise ImportError(f"{what} path {path!r}: module {module_name!r} has no attribute {attr!r}") from exc
    return obj


def load_env(path: str, kwargs: Mapping[str, Any] | None = None) -> Env | MultiTurnEnv:
    """Import the env class at `path`, construct it with `kwargs`, check it has the methods we call."""
    factory = load_object(path, "env")
    try:
        env = factory(**dict(kwargs or {}))
    except TypeError as exc:
        raise TypeError(f"env {path!r} could not be constructed with kwargs {dict(kwargs or {})}: "
                        f"{exc}") from exc
    needed = ("problems", "rollout") if hasattr(env, "rollout") else ("problems", "score")
    missing = [m for m in needed if not callable(getattr(env, m, None))]
    if missing:
        raise TypeError(f"env {path!r} is missing method(s) {missing}; see answerkey.envs.Env")
    return env
