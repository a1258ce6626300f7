"""GSM8K grade-school word problems, read from JSONL (`question`, `answer` ending in `#### <number>`).

    [env]
    path = "answerkey.envs.gsm8k:GSM8KEnv"
    kwargs = {}            # the copy shipped in envs/data/gsm8k/; or train_path = "...", test_path = "..."

The gold answer is the number after `####` (thousands separators removed). A completion is scored by
the math reward (`rewards.math`): its final answer (last `\\boxed{}`, else `#### x`, else "the answer
is …") must equal the gold exactly, as a rational or symbolically; `score_batch` goes through the
math reward's process pool with its per-item kill. The prompt asks for `#### <answer>` on the last
line. The worked solution is kept in `meta["solution"]` for SFT. A row whose answer has no `####`
number raises naming file and line.
"""

from __future__ import annotations

from collections.abc import Sequence

from answerkey.envs.base import Env, Problem, Split
from answerkey.envs.jsonl import DATA, DatasetError, read_rows, stem
from answerkey.rewards import Score
from answerkey.rewards import math as math_reward

TRAIN, TEST = DATA / "gsm8k" / "train.jsonl.gz", DATA / "gsm8k" / "test.jsonl.gz"  # 7,473 / 1,319 rows
INSTRUCTION = "Solve the problem. End your reply with a line of the form '#### <answer>'."


class GSM8KEnv(Env):
    def __init__(self, train_path: str = str(TRAIN), test_path: str = str(TEST),
                 instruction: str = INSTRUCTION, limit: int | None = None):
        self.paths = {"train": train_path, "test": test_path}
        self.instruction = instruction
        self.limit = limit  # keep only the first `limit` rows of each split (quick runs)
        self._cache: dict[str, list[Problem]] = {}

    def problems(self, split: Split) -> Sequence[Problem]:
        if split not in self._cache:
            self._cache[split] = self._load(split)
        return self._cache[split]

    def _load(self, split: Split) -> list[Problem]:
        path = self.paths[split]
        problems = []
        for i, row in enumerate(read_rows(path, ("question", "answer"))[: self.limit]):
            solution, sep, final = row["answer"].rpartition("####")
            gold = final.strip().replace(",", "")
            if not sep or math_reward.exact_value(gold) is None:
                raise DatasetError(f"{path}:{i + 1}: field 'answer' must end with '#### <number>', "
                                   f"got ...{row['answer'][-40:]!r}")
            question = row["question"].strip()
            prompt = f"{question}\n\n{self.instruction}" if self.instruction else question
            problems.append(Problem(id=f"gsm8k/{stem(path)}/{i}", prompt=prompt, answer=gold,
                                    meta={"solution": f"{solution.strip()}\n#### {gold}"}))
        return problems

    def score(self, problem: Problem, completion: str) -> Score:
        return math_reward.score(completion, problem.answer)

    def score_batch(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[Score]:
        return math_reward.score_batch([(c, p.answer) for p, c in zip(problems, completions, strict=True)])
