"""MATH competition problems (e.g. MATH-500), read from JSONL (`problem`, `answer`, optional `solution`).

    [env]
    path = "answerkey.envs.math:MathEnv"
    kwargs = { test_path = "../shared/data/math500/test.jsonl" }

Until the sympy checker lands, completions are scored by the plain exact-number checker: the last
`\\boxed{}` must be a number equal to the gold, so non-numeric golds (expressions, intervals,
tuples) score `unparseable` and are counted as such: 370 of the 500 MATH-500 golds are numeric.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from answerkey.envs.base import Env, Problem, Split
from answerkey.envs.jsonl import read_rows
from answerkey.rewards import Score, Status, exact

INSTRUCTION = "Put your final answer within \\boxed{}."


class MathEnv(Env):
    def __init__(self, train_path: str | None = None, test_path: str | None = None, instruction: str = INSTRUCTION,
                 limit: int | None = None):
        self.paths = {"train": train_path, "test": test_path}
        self.instruction = instruction
        self.limit = limit
        self._cache: dict[str, list[Problem]] = {}

    def problems(self, split: Split) -> Sequence[Problem]:
        if split not in self._cache:
            path = self.paths.get(split)
            if path is None:
                raise ValueError(f"MathEnv: no {split}_path was given (env.kwargs.{split}_path)")
            rows = read_rows(path, ("problem", "answer"))[: self.limit]
            self._cache[split] = [
                Problem(id=row.get("unique_id") or f"math/{Path(path).stem}/{i}",
                        prompt=f"{row['problem'].strip()}\n\n{self.instruction}" if self.instruction else row["problem"],
                        answer=row["answer"].strip(), meta={"solution": row.get("solution", ""), "level": row.get("level")})
                for i, row in enumerate(rows)
            ]
        return self._cache[split]

    def score(self, problem: Problem, completion: str) -> Score:
        if exact.parse_number(problem.answer) is None:
            return Score.failed(Status.unparseable, f"gold {problem.answer!r} needs the sympy checker")
        return exact.score(completion, problem.answer)
