"""MATH competition problems (e.g. MATH-500), read from JSONL (`problem`, `answer`, optional `solution`).

    [env]
    path = "answerkey.envs.math:MathEnv"
    kwargs = { train_path = "data/math/train.jsonl" }   # test: MATH-500, shipped in envs/data/math500/

Completions are scored by the math reward (`rewards.math`): the last `\\boxed{}` (else "the answer
is …") is compared with the gold exactly or symbolically, sets/tuples/intervals/matrices included;
`score_batch` goes through its process pool with a per-item kill. All 500 MATH-500 worked solutions
score correct against their golds.
"""

from __future__ import annotations

from collections.abc import Sequence

from answerkey.envs.base import Env, Problem, Split
from answerkey.envs.jsonl import DATA, read_rows, stem
from answerkey.rewards import Score
from answerkey.rewards import math as math_reward

MATH500 = DATA / "math500" / "test.jsonl.gz"  # the MATH-500 test subset (500 rows)
INSTRUCTION = "Put your final answer within \\boxed{}."


class MathEnv(Env):
    def __init__(self, train_path: str | None = None, test_path: str = str(MATH500),
                 instruction: str = INSTRUCTION, limit: int | None = None):
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
            self._cache[split] = [self._problem(path, i, row) for i, row in enumerate(rows)]
        return self._cache[split]

    def _problem(self, path: str, i: int, row: dict) -> Problem:
        prompt = f"{row['problem'].strip()}\n\n{self.instruction}" if self.instruction else row["problem"]
        meta = {"solution": row.get("solution", ""), "level": row.get("level")}
        return Problem(id=row.get("unique_id") or f"math/{stem(path)}/{i}", prompt=prompt,
                       answer=row["answer"].strip(), meta=meta)

    def score(self, problem: Problem, completion: str) -> Score:
        return math_reward.score(completion, problem.answer)

    def score_batch(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        return math_reward.score_batch([(c, p.answer) for p, c in zip(problems, completions, strict=True)])
