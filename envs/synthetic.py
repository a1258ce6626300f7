"""A synthetic problem world: seeded, offline arithmetic and short word problems with checkable answers.

    env = SyntheticEnv(difficulty=3, train_size=2000, test_size=200)
    env.problems("test")[0].prompt
    # 'Emily buys 3 apples and 2 oranges. Each orange costs $2 and the total is $13.
    #  How much does each apple cost?'
    env.problems("test")[0].meta["solution"]
    # 'The oranges cost 2 * 2 = 4. The apples cost 13 - 4 = 9. Each apple costs 9 / 3 = 3.\\n#### 3'

`difficulty` (1-4) picks which templates are in play (every template at or below it) and how large
the numbers get: 1 is addition and subtraction of single digits, bare and as one-step word problems;
2 the same up to 20; 3 adds multiplication and the two-step shopping problems from the talk; 4
division and larger numbers. `kinds` narrows the templates, e.g. `["unit_price"]` for the talk's
problem only.

Two multi-step kinds are opt-in (never in the default mix): `chain` ("What is 4 + 7 - 3?") and
`story` ("Ava has 4 kiwis. Ava buys 7 more. Ava gives 3 away. How many kiwis does Ava have now?"),
`steps` operands long, each operand up to the difficulty's largest number. Their worked solution is
one line per step ("4 + 7 = 11. 11 - 3 = 8."): a small model that writes the steps out composes
two-operand facts it knows, one that answers at once must do the whole sum in one token. That gap
is what `make demo` shows RL closing (a policy imitating a mix of terse and worked demonstrations
learns, from the reward alone, to show its work).

The train/test split is a pure function of a problem's arithmetic (`3+6`, `(13-2*2)/3`), not its
wording, names or items, by hash: a held-out computation never appears in training under any seed,
size or surface form. Every problem carries a worked solution ending in `#### <answer>` for SFT and
the corpus. `checker="math"` scores with the sympy math reward (`rewards/math/`, the checker `make
demo` uses) instead of the plain exact-number check; on these integer answers the two agree.
`SyntheticRetryEnv` is the multi-turn form: a wrong first answer gets "Not quite. Try again.".
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from functools import partial

from answerkey.envs.base import SPLITS, Env, GenerateFn, Problem, Split, Trajectory, TurnBuilder
from answerkey.rewards import Score, Status, exact
from answerkey.rewards import math as math_reward

NAMES = ("Emily", "Liam", "Ava", "Noah", "Mia", "Omar", "Zoe", "Ken", "Sara", "Leo")
ITEMS = ("apple", "orange", "pear", "banana", "lemon", "plum", "kiwi", "melon", "pencil", "marble", "sticker",
         "cookie")
MAX_NUMBER = {1: 9, 2: 20, 3: 50, 4: 200}  # largest operand of + and - at each difficulty

# A template draws numbers and words; it returns (arithmetic, prompt, answer, solution). The
# arithmetic (e.g. "3+6") decides the split, so "What is 3 + 6?" and "Emily has 3 apples and buys 6
# more" are always on the same side.
Draw = tuple[str, str, int, str]


def _add(rng: random.Random, d: int) -> Draw:
    a, b = rng.randint(0, MAX_NUMBER[d]), rng.randint(0, MAX_NUMBER[d])
    return f"{a}+{b}", f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}."


def _sub(rng: random.Random, d: int) -> Draw:
    a, b = sorted((rng.randint(0, MAX_NUMBER[d]), rng.randint(0, MAX_NUMBER[d])), reverse=True)
    return f"{a}-{b}", f"What is {a} - {b}?", a - b, f"{a} - {b} = {a - b}."


def _buys_more(rng: random.Random, d: int) -> Draw:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, MAX_NUMBER[d]), rng.randint(1, MAX_NUMBER[d])
    prompt = f"{name} has {a} {item}s and buys {b} more. How many {item}s does {name} have now?"
    return f"{a}+{b}", prompt, a + b, f"{a} + {b} = {a + b}."


def _gives_away(rng: random.Random, d: int) -> Draw:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = sorted((rng.randint(1, MAX_NUMBER[d]), rng.randint(1, MAX_NUMBER[d])), reverse=True)
    prompt = f"{name} has {a} {item}s and gives {b} to a friend. How many {item}s are left?"
    return f"{a}-{b}", prompt, a - b, f"{a} - {b} = {a - b}."


def _mul(rng: random.Random, d: int) -> Draw:
    hi = 9 if d <= 3 else 12
    a, b = rng.randint(2, hi), rng.randint(2, hi)
    return f"{a}*{b}", f"What is {a} * {b}?", a * b, f"{a} * {b} = {a * b}."


def _shopping_total(rng: random.Random, d: int) -> Draw:
    name, (item1, item2) = rng.choice(NAMES), rng.sample(ITEMS, 2)
    n1, n2, p1, p2 = (rng.randint(1, 2 * d) for _ in range(4))
    x, y = n1 * p1, n2 * p2
    prompt = (f"{name} buys {n1} {item1}s at ${p1} each and {n2} {item2}s at ${p2} each. "
              f"How much does {name} spend?")
    solution = f"{n1} * {p1} = {x}. {n2} * {p2} = {y}. {x} + {y} = {x + y}."
    return f"{n1}*{p1}+{n2}*{p2}", prompt, x + y, solution


def _unit_price(rng: random.Random, d: int) -> Draw:
    name, (item1, item2) = rng.choice(NAMES), rng.sample(ITEMS, 2)
    n1, n2, p1, p2 = (rng.randint(1, 2 * d) for _ in range(4))
    x, y = n1 * p1, n2 * p2
    prompt = (f"{name} buys {n1} {item1}s and {n2} {item2}s. "
              f"Each {item2} costs ${p2} and the total is ${x + y}. How much does each {item1} cost?")
    solution = (f"The {item2}s cost {n2} * {p2} = {y}. The {item1}s cost {x + y} - {y} = {x}. "
                f"Each {item1} costs {x} / {n1} = {p1}.")
    return f"({x + y}-{n2}*{p2})/{n1}", prompt, p1, solution


def _share(rng: random.Random, d: int) -> Draw:
    name = rng.choice(NAMES)
    k, q = rng.randint(2, 9), rng.randint(1, MAX_NUMBER[d] // 4)
    prompt = (f"{name} bakes {k * q} cookies and shares them equally among {k} friends. "
              f"How many cookies does each friend get?")
    return f"{k * q}/{k}", prompt, q, f"{k * q} / {k} = {q}."


def _chain(rng: random.Random, d: int, steps: int) -> Draw:
    nums, ops, answer = _steps(rng, d, steps)
    terms = " ".join([str(nums[0])] + [f"{o} {b}" for o, b in zip(ops, nums[1:], strict=True)])
    return _arithmetic(nums, ops), f"What is {terms}?", answer, _worked(nums, ops)


def _story(rng: random.Random, d: int, steps: int) -> Draw:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    nums, ops, answer = _steps(rng, d, steps)
    events = [f"{name} buys {b} more." if o == "+" else f"{name} gives {b} away."
              for o, b in zip(ops, nums[1:], strict=True)]
    prompt = " ".join([f"{name} has {nums[0]} {item}s.", *events, f"How many {item}s does {name} have now?"])
    return _arithmetic(nums, ops), prompt, answer, _worked(nums, ops)


def _steps(rng: random.Random, d: int, steps: int) -> tuple[list[int], list[str], int]:
    """`steps` operands joined by + and -, the running total never negative: (operands, ops, answer)."""
    nums, ops = [rng.randint(1, MAX_NUMBER[d])], []
    total = nums[0]
    for _ in range(steps - 1):
        take = rng.random() < 0.5 and total > 0
        b = rng.randint(1, min(MAX_NUMBER[d], total) if take else MAX_NUMBER[d])
        ops.append("-" if take else "+")
        nums.append(b)
        total = total - b if take else total + b
    return nums, ops, total


def _arithmetic(nums: list[int], ops: list[str]) -> str:
    return str(nums[0]) + "".join(f"{o}{b}" for o, b in zip(ops, nums[1:], strict=True))


def _worked(nums: list[int], ops: list[str]) -> str:
    """One sentence per step: '4 + 7 = 11. 11 - 3 = 8.'"""
    lines, total = [], nums[0]
    for o, b in zip(ops, nums[1:], strict=True):
        new = total + b if o == "+" else total - b
        lines.append(f"{total} {o} {b} = {new}.")
        total = new
    return " ".join(lines)


# (template, the lowest difficulty that uses it)
TEMPLATES: tuple[tuple[Callable[[random.Random, int], Draw], int], ...] = (
    (_add, 1), (_sub, 1), (_buys_more, 1), (_gives_away, 1),
    (_mul, 3), (_shopping_total, 3), (_unit_price, 3), (_share, 4),
)
MULTI_STEP = {"chain": _chain, "story": _story}  # opt-in kinds (`kinds=[...]`), `steps` operands long


def split_of(arithmetic: str, test_percent: int) -> Split:
    """The split a computation belongs to: a hash bucket, independent of seed, sizes and wording."""
    bucket = int.from_bytes(hashlib.blake2b(arithmetic.encode(), digest_size=8).digest(), "big") % 100
    return "test" if bucket < test_percent else "train"


class SyntheticEnv(Env):
    """Arithmetic and word problems; reward 1 when the last `#### x` (or `\\boxed{x}`) equals the answer."""

    def __init__(self, difficulty: int = 2, train_size: int = 5000, test_size: int = 200, seed: int = 0,
                 test_percent: int = 20, instruction: str = "", kinds: Sequence[str] | None = None,
                 steps: int = 3, checker: str = "exact"):
        if difficulty not in MAX_NUMBER:
            raise ValueError(f"SyntheticEnv.difficulty must be one of {sorted(MAX_NUMBER)}, "
                             f"got {difficulty!r}")
        if checker not in ("exact", "math"):
            raise ValueError(f"SyntheticEnv.checker must be 'exact' or 'math' (the sympy math reward), "
                             f"got {checker!r}")
        self.checker = checker
        if not 2 <= steps <= 8:
            raise ValueError(f"SyntheticEnv.steps (operands of the chain/story kinds) must be in 2..8, "
                             f"got {steps!r}")
        default: dict[str, Callable[[random.Random], Draw]] = {
            t.__name__.strip("_"): partial(t, d=difficulty) for t, level in TEMPLATES if level <= difficulty}
        available = default | {name: partial(t, d=difficulty, steps=steps) for name, t in MULTI_STEP.items()}
        unknown = sorted(set(kinds or ()) - set(available))
        if unknown:
            raise ValueError(f"SyntheticEnv.kinds: {unknown} not available at difficulty {difficulty}; "
                             f"choose from {sorted(available)}")
        self.templates = {k: available[k] for k in kinds} if kinds else default
        if not 0 < test_percent < 100:
            raise ValueError(f"SyntheticEnv.test_percent must be in 1..99, got {test_percent!r}")
        self.difficulty, self.seed = difficulty, seed
        self.test_percent, self.instruction = test_percent, instruction
        self.sizes = {"train": train_size, "test": test_size}
        self._problems: dict[str, list[Problem]] | None = None

    def problems(self, split: Split) -> Sequence[Problem]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self._problems is None:
            self._problems = self._generate()
        return self._problems[split]

    def _generate(self) -> dict[str, list[Problem]]:
        """Draw problems until both splits are full or the space at this difficulty is exhausted."""
        rng = random.Random(f"synthetic-{self.difficulty}-{self.seed}")
        out: dict[str, list[Problem]] = {"train": [], "test": []}
        seen: set[str] = set()
        misses = 0  # consecutive draws that added nothing: the space at this difficulty is exhausted
        while misses < 5000:
            kind = rng.choice(list(self.templates))
            arithmetic, prompt, answer, solution = self.templates[kind](rng)
            key = f"{kind}/{arithmetic}"
            split = split_of(arithmetic, self.test_percent)
            if key in seen or len(out[split]) >= self.sizes[split]:
                misses += 1
                continue
            seen.add(key)
            misses = 0
            if self.instruction:
                prompt = f"{prompt}\n\n{self.instruction}"
            meta = {"solution": f"{solution}\n#### {answer}", "difficulty": self.difficulty}
            out[split].append(Problem(id=f"synthetic/{key}", prompt=prompt, answer=str(answer), meta=meta))
            if all(len(out[s]) >= self.sizes[s] for s in SPLITS):
                break
        for split in SPLITS:
            if not out[split]:
                raise ValueError(f"SyntheticEnv(difficulty={self.difficulty}) produced no {split} problems")
        return out

    def score(self, problem: Problem, completion: str) -> Score:
        if self.checker == "math":
            return math_reward.score(completion, problem.answer)
        return exact.score(completion, problem.answer)


class SyntheticRetryEnv(SyntheticEnv):
    """Multi-turn: after a wrong answer the env replies "Not quite. Try again." (up to `max_attempts`).

    The reward is that of the last attempt, so the policy is credited for correcting itself; the
    feedback turns are env tokens (loss mask 0), the attempts are trained on.
    """

    def __init__(self, max_attempts: int = 2, **kwargs):
        super().__init__(**kwargs)
        if max_attempts < 1:
            raise ValueError(f"SyntheticRetryEnv.max_attempts must be >= 1, got {max_attempts}")
        self.max_attempts = max_attempts

    def rollout(self, problem: Problem, generate: GenerateFn, tokenizer) -> Trajectory:
        turns = TurnBuilder(tokenizer, problem.messages())
        score = Score.failed(Status.no_answer)
        for attempt in range(self.max_attempts):
            if attempt:
                turns.add_message("user", "Not quite. Try again.")
            completion = turns.generate(generate)
            score = self.score(problem, completion.text)
            if score.status == Status.correct or completion.truncated:
                break
        return turns.finish(score)
