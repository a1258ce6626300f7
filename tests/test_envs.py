import json

import pytest

from answerkey.envs import Env, Problem, load_env, score_batch
from answerkey.envs.gsm8k import GSM8KEnv
from answerkey.envs.jsonl import DatasetError
from answerkey.envs.math import MathEnv
from answerkey.envs.synthetic import SyntheticEnv, split_of
from answerkey.rewards import Score, Status


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_synthetic_solutions_score_correct_and_splits_are_disjoint(difficulty):
    env = SyntheticEnv(difficulty=difficulty, train_size=500, test_size=100)
    train, test = env.problems("train"), env.problems("test")
    assert train and test
    scores = score_batch(env, [*train, *test], [p.meta["solution"] for p in [*train, *test]])
    assert all(s.status == Status.correct for s in scores)
    arithmetic = lambda ps: {p.id.split("/", 2)[2] for p in ps}  # noqa: E731
    assert not arithmetic(train) & arithmetic(test)


def test_synthetic_split_depends_only_on_the_arithmetic():
    held_out = {p.id.split("/", 2)[2] for p in SyntheticEnv(difficulty=3, seed=0).problems("test")}
    for seed, size in [(1, 5000), (2, 300)]:
        other = SyntheticEnv(difficulty=3, seed=seed, train_size=size)
        assert not held_out & {p.id.split("/", 2)[2] for p in other.problems("train")}
    assert all(split_of(a, 20) == "test" for a in held_out)


def test_synthetic_is_deterministic_and_has_the_talks_problem():
    a, b = SyntheticEnv(difficulty=3, seed=7), SyntheticEnv(difficulty=3, seed=7)
    assert a.problems("train")[:50] == b.problems("train")[:50]
    prompts = [p.prompt for p in a.problems("train")]
    assert any("How much does each" in p and "the total is $" in p for p in prompts)


def test_synthetic_rejects_a_bad_difficulty_or_kind():
    with pytest.raises(ValueError, match="difficulty"):
        SyntheticEnv(difficulty=9)
    with pytest.raises(ValueError, match=r"kinds: \['mul'\] not available at difficulty 1"):
        SyntheticEnv(difficulty=1, kinds=["mul"])


def test_synthetic_kinds_narrow_the_templates():
    env = SyntheticEnv(difficulty=3, kinds=["unit_price"], train_size=50)
    assert all(p.id.startswith("synthetic/unit_price/") for p in env.problems("train"))
    assert all("How much does each" in p.prompt for p in env.problems("test"))


@pytest.mark.parametrize("steps", [2, 3, 5])
def test_multi_step_kinds_solve_by_their_steps_and_split_by_arithmetic(steps):
    env = SyntheticEnv(difficulty=1, kinds=["chain", "story"], steps=steps, train_size=400, test_size=100)
    train, test = env.problems("train"), env.problems("test")
    problems = [*train, *test]
    assert {p.id.split("/")[1] for p in problems} == {"chain", "story"}
    scores = score_batch(env, problems, [p.meta["solution"] for p in problems])
    assert all(s.status == Status.correct for s in scores)
    for p in problems:  # one sentence per step, never a negative running total
        lines = p.meta["solution"].split("\n")[0].split(". ")
        assert len(lines) == steps - 1 and "= -" not in p.meta["solution"], p
    arithmetic = lambda ps: {p.id.split("/", 2)[2] for p in ps}  # noqa: E731
    assert not arithmetic(train) & arithmetic(test)


def test_multi_step_example_and_opt_in():
    env = SyntheticEnv(difficulty=1, kinds=["story"], steps=3, train_size=20)
    p = env.problems("train")[0]
    nums = [int(w) for w in p.prompt.replace(".", " ").split() if w.isdigit()]
    assert len(nums) == 3 and (" buys " in p.prompt or " gives " in p.prompt), p.prompt
    # the default mix is unchanged by the opt-in kinds
    default = SyntheticEnv(difficulty=2).problems("train")
    assert not any(p.id.split("/")[1] in ("chain", "story") for p in default)
    with pytest.raises(ValueError, match="steps"):
        SyntheticEnv(kinds=["chain"], steps=1)


def test_gsm8k_and_math_read_the_shipped_data_by_default():
    gsm = GSM8KEnv()
    problems = gsm.problems("test")
    assert len(problems) == 1319 and problems[0].answer == "18" and problems[0].id == "gsm8k/test/0"
    assert float(gsm.score(problems[0], "so she makes 18 dollars.\n#### 18")) == 1.0
    assert len(gsm.problems("train")) == 7473
    math = MathEnv()
    assert len(math.problems("test")) == 500
    with pytest.raises(ValueError, match="train_path"):
        math.problems("train")  # MATH's training split does not ship


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"question": "q"}', r"bad.jsonl:2: field 'answer' is missing"),
        ('{"question": "q", "answer": 5}', r"bad.jsonl:2: field 'answer' must be a non-empty string"),
        ('{"question": "q", "answer": "no marker"}',
         r"bad.jsonl:2: field 'answer' must end with '#### <number>'"),
        ('{"question": "q", "answer": "#### x"}',
         r"bad.jsonl:2: field 'answer' must end with '#### <number>'"),
        ('{"question": "q", "answer": ', r"bad.jsonl:2: not valid JSON"),
        ('["q", "a"]', r"bad.jsonl:2: expected a JSON object"),
    ],
)
def test_a_bad_row_names_file_line_and_field(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "fine", "answer": "x\n#### 1"}) + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=match):
        GSM8KEnv(test_path=str(path)).problems("test")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match="nope.jsonl: no such file"):
        MathEnv(test_path=str(tmp_path / "nope.jsonl")).problems("test")


class RaisingEnv(Env):
    def problems(self, split):
        return [Problem("p0", "q", "1")]

    def score(self, problem, completion):
        if completion == "boom":
            raise RuntimeError("checker crashed")
        return Score(1.0, Status.correct)


def test_env_that_raises_scores_error_naming_the_problem():
    env = RaisingEnv()
    p = env.problems("train")[0]
    scores = score_batch(env, [p, p], ["fine", "boom"])
    assert [s.status for s in scores] == [Status.correct, Status.error]
    assert "p0" in scores[1].detail and "checker crashed" in scores[1].detail


@pytest.mark.parametrize(
    "path, match",
    [
        ("answerkey.envs.synthetic", "must look like 'package.module:Name'"),
        ("answerkey.envs.nope:Env", "cannot import module 'answerkey.envs.nope'"),
        ("answerkey.envs.synthetic:Nope", "has no attribute 'Nope'"),
        ("answerkey.envs.jsonl:DatasetError", "missing method"),
    ],
)
def test_load_env_errors_name_the_path(path, match):
    with pytest.raises((ImportError, ValueError, TypeError), match=match):
        load_env(path, {})


def test_load_env_by_dotted_path_with_kwargs():
    env = load_env("answerkey.envs.synthetic:SyntheticEnv", {"difficulty": 1})
    assert env.difficulty == 1 and all(int(p.answer) <= 18 for p in env.problems("test"))
    with pytest.raises(TypeError, match="could not be constructed"):
        load_env("answerkey.envs.synthetic:SyntheticEnv", {"difficulty_level": 1})


def test_synthetic_with_the_math_checker_agrees_with_the_exact_one():
    exact_env = SyntheticEnv(difficulty=1, kinds=["chain", "story"], train_size=60, test_size=20)
    math_env = SyntheticEnv(difficulty=1, kinds=["chain", "story"], train_size=60, test_size=20,
                            checker="math")
    problems = list(math_env.problems("test"))
    completions = [p.meta["solution"] for p in problems]
    completions += ["#### 999", "no answer here", "\\boxed{" + problems[0].answer + "}"]
    problems += [problems[0]] * 3
    got = [s.status for s in math_env.score_batch(problems, completions)]
    assert got == [s.status for s in score_batch(exact_env, problems, completions)]
    assert got[-3:] == [Status.wrong, Status.no_answer, Status.correct]
    with pytest.raises(ValueError, match="checker"):
        SyntheticEnv(checker="sympy")
