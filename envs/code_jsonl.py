"""Code problems from JSONL, scored by running the completion's code against unit tests in the sandbox.

    [env]
    path = "answerkey.envs.code_jsonl:CodeJSONLEnv"
    kwargs = { train_path = "data/code/train.jsonl", test_path = "data/code/test.jsonl", timeout_s = 5.0 }

Each row: `prompt` (the task, shown to the model), `tests` (HumanEval's `def check(candidate): ...`
or MBPP-style top-level asserts calling the function by name) and `entry_point` (the function the
tests call); optional `id`, `setup` (trusted code put before the completion's code and run in the
judge too, e.g. imports and helpers the tests call) and `solution` (a reference completion; it must
score 1.0, which `answerkey env` checks). The reward is the fraction of asserts passed
(`rewards.code`): partial credit, with `Status.partial` counted in the step metrics.

The completion's code is its fenced ```python blocks (all of them, in order), else the whole
text. It is not checked for anything before running: the sandbox is the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from answerkey.envs.base import Env, Problem, Split
from answerkey.envs.jsonl import DatasetError, read_rows
from answerkey.rewards import Score
from answerkey.rewards.code import Job, extract_code, run_tests_batch

INSTRUCTION = "Write the Python function. Reply with the complete code in one ```python code block."


def build_program(setup: str, entry_point: str, completion: str) -> str:
    """The program to run: `setup`, then the completion's code (a whole function, or a body continuing
    `setup`)."""
    code = extract_code(completion)
    if f"def {entry_point}" in code or not setup:
        return f"{setup}\n\n{code}" if setup else code
    return setup + code  # a bare continuation of the prompt's signature (HumanEval's original format)


class CodeEnv(Env):
    """Scoring shared by the code envs: problems carry `entry_point`, `tests`, `setup` in `meta`."""

    timeout_s: float = 5.0

    def job(self, problem: Problem, completion: str) -> Job:
        meta = problem.meta
        program = build_program(meta["setup"], meta["entry_point"], completion)
        return Job(program, meta["tests"], meta["entry_point"], self.timeout_s, prelude=meta["setup"])

    def score(self, problem: Problem, completion: str) -> Score:
        return run_tests_batch([self.job(problem, completion)])[0]

    def score_batch(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        """All completions in one sandbox batch (parallel over the pool, each with its own kill)."""
        return run_tests_batch([self.job(p, c) for p, c in zip(problems, completions, strict=True)])


class CodeJSONLEnv(CodeEnv):
    def __init__(self, train_path: str | None = None, test_path: str | None = None,
                 instruction: str = INSTRUCTION, timeout_s: float = 5.0, limit: int | None = None):
        if not timeout_s > 0:
            raise ValueError(f"CodeJSONLEnv: timeout_s must be > 0, got {timeout_s}")
        self.paths = {"train": train_path, "test": test_path}
        self.instruction, self.timeout_s, self.limit = instruction, timeout_s, limit
        self._cache: dict[str, list[Problem]] = {}

    def problems(self, split: Split) -> Sequence[Problem]:
        if split not in self._cache:
            path = self.paths.get(split)
            if path is None:
                raise ValueError(f"CodeJSONLEnv: no {split}_path was given (env.kwargs.{split}_path)")
            rows = read_rows(path, ("prompt", "tests", "entry_point"))[: self.limit]
            self._cache[split] = [self._problem(path, i, row) for i, row in enumerate(rows)]
        return self._cache[split]

    def _problem(self, path: str, i: int, row: dict) -> Problem:
        entry_point, setup = row["entry_point"].strip(), row.get("setup", "")
        if not entry_point.isidentifier():
            raise DatasetError(f"{path}:{i + 1}: field 'entry_point' must be a Python name, "
                               f"got {entry_point!r}")
        if not isinstance(setup, str):
            raise DatasetError(f"{path}:{i + 1}: field 'setup' must be a string")
        try:
            compile(row["tests"], f"{path}:{i + 1}:tests", "exec")
        except SyntaxError as exc:
            raise DatasetError(f"{path}:{i + 1}: field 'tests' is not valid Python: {exc.msg} "
                               f"(line {exc.lineno})") from None
        prompt = f"{row['prompt'].strip()}\n\n{self.instruction}" if self.instruction else row["prompt"]
        meta = {"entry_point": entry_point, "tests": row["tests"], "setup": setup}
        if row.get("solution"):
            meta["solution"] = row["solution"]
        return Problem(id=str(row.get("id") or f"code/{Path(path).stem}/{i}"), prompt=prompt,
                       answer=row.get("solution", ""), meta=meta)
