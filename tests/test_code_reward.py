"""The code reward end to end: HumanEval through the real sandbox, the per-assert pass fraction, the
status mapping, the code envs, and the refusal to run without isolation.

Runs as root like CI; a missing isolation feature makes `Sandbox()` raise, so these tests fail (never skip).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from answerkey.envs import load_env, score_batch
from answerkey.envs.code_jsonl import build_program
from answerkey.envs.humaneval import HumanEvalEnv, load_rows
from answerkey.envs.jsonl import DatasetError
from answerkey.rewards import Status
from answerkey.rewards import code as code_reward
from answerkey.rewards.code import Job, extract_code, run_tests, run_tests_batch
from answerkey.rewards.sandbox import Sandbox, SandboxUnavailable

pytestmark = pytest.mark.slow  # programs run in the sandbox's processes: make check leaves it out

ADD = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def rows():
    return load_rows()


def test_every_humaneval_canonical_solution_scores_one(rows):
    jobs = [Job(r["prompt"] + r["canonical_solution"], r["test"], r["entry_point"], 10.0, prelude=r["prompt"])
            for r in rows]
    scores = run_tests_batch(jobs)
    assert len(rows) == 164
    failed = {r["task_id"]: s for r, s in zip(rows, scores, strict=True) if s.value != 1.0}
    assert not failed
    assert all(s.status == Status.correct for s in scores)


def test_humaneval_wrong_solutions_score_below_one(rows):
    """Each prompt with the next problem's solution, and with `return None`: never full credit."""
    swapped = [Job(r["prompt"] + rows[(i + 1) % len(rows)]["canonical_solution"], r["test"], r["entry_point"],
                   10.0, prelude=r["prompt"]) for i, r in enumerate(rows)]
    nones = [Job(r["prompt"] + "    return None\n", r["test"], r["entry_point"], 10.0, prelude=r["prompt"])
             for r in rows]
    scores = run_tests_batch(swapped + nones)
    full = [job.entry_point for job, s in zip(swapped + nones, scores, strict=True) if s.value >= 1.0]
    assert not full
    assert all(s.status in (Status.wrong, Status.partial, Status.unparseable, Status.timeout) for s in scores)


CHECK = """
def check(candidate):
    import math
    assert True                      # not about the candidate: not counted
    assert candidate(1, 2) == 3
    x = candidate(2, 2)
    assert x == 4                    # involves the candidate through x
    for i in range(5):
        assert candidate(i, i) == 2 * i
    assert math.isclose(candidate(0.1, 0.2), 0.3)
    assert candidate(1, 1) == 3      # wrong expectation: fails for everyone
"""


@pytest.mark.parametrize(("program", "value", "status"), [
    (ADD, 4 / 5, Status.partial),
    ("def add(a, b):\n    return a - b if a == 1 else a + b\n", 2 / 5, Status.partial),  # loop fails at i=1
    ("def add(a, b):\n    return 0\n", 0.0, Status.wrong),
    ("def add(a, b):\n    raise ValueError('no')\n", 0.0, Status.wrong),
    ("def add(a, b)\n    return a + b\n", 0.0, Status.unparseable),
    ("import nonexistent_module\n" + ADD, 0.0, Status.wrong),
    ("def plus(a, b):\n    return a + b\n", 0.0, Status.wrong),
    ("add = 3\n", 0.0, Status.wrong),
    (ADD + "while True:\n    pass\n", 0.0, Status.timeout),
])
def test_pass_fraction_counts_each_assert_about_the_candidate(program, value, status):
    score = run_tests(program, CHECK, "add", timeout_s=2.0)
    assert score.status == status, score.detail
    assert score.value == pytest.approx(value)


def test_mbpp_style_top_level_asserts_and_tests_without_asserts():
    tests = "assert add(1, 2) == 3\nassert add(2, 2) == 5\nassert add(0, 0) == 0\n"
    score = run_tests(ADD, tests, "add", 2.0)
    assert (score.value, score.status) == (pytest.approx(2 / 3), Status.partial)
    no_asserts = run_tests(ADD, "def check(candidate):\n    candidate(1, 2)\n", "add", 2.0)
    assert no_asserts.status == Status.error and "no assert" in no_asserts.detail


def test_program_and_tests_may_import_any_stdlib_module():
    program = "import zipfile, xml.dom.minidom\ndef f():\n    return zipfile.ZIP_STORED\n"
    tests = ("import tarfile, email.utils\n"
             "def check(candidate):\n    assert candidate() == 0 and tarfile.BLOCKSIZE == 512\n")
    assert run_tests(program, tests, "f", 5.0).status == Status.correct


def test_values_cross_with_their_exact_types():
    program = textwrap.dedent("""
        def f(kind):
            return {"tuple": (1, 2), "list": [1, 2], "set": {1}, "dict": {(1, "a"): [b"x", None]},
                    "float": 0.1 + 0.2, "big": 3 ** 5000, "str": "\\udc80 nul\\x00", "bool": True}[kind]
    """)
    tests = textwrap.dedent("""
        def check(candidate):
            assert candidate("tuple") == (1, 2) and type(candidate("tuple")) is tuple
            assert candidate("list") != (1, 2)
            assert candidate("set") == {1}
            assert candidate("dict") == {(1, "a"): [b"x", None]}
            assert candidate("float") == 0.30000000000000004
            assert candidate("big") == 3 ** 5000
            assert candidate("str") == "\\udc80 nul\\x00"
            assert candidate("bool") is True
    """)
    score = run_tests(program, tests, "f", 5.0)
    assert score.status == Status.correct, score.detail


def test_extract_code_and_build_program():
    completion = ("Here you go:\n```python\nimport math\n```\ntext\n"
                  "```python\ndef f(x):\n    return math.sqrt(x)\n```\n")
    assert extract_code(completion) == "import math\n\n\ndef f(x):\n    return math.sqrt(x)\n"
    assert extract_code("def f(x):\n    return x") == "def f(x):\n    return x"
    # a continuation of the prompt's signature
    assert build_program("def f(x):\n", "f", "    return x\n") == "def f(x):\n    return x\n"
    program = build_program("import os\n", "f", "```python\ndef f(x):\n    return x\n```")
    assert program.startswith("import os\n\n\ndef f")


def test_humaneval_env_is_usable_by_the_rl_loop(rows):
    env = load_env("answerkey.envs.humaneval:HumanEvalEnv", {"train_size": 100, "limit": 10})
    train, test = env.problems("train"), env.problems("test")
    assert len(train) == 10 and train[0].id == "HumanEval/0" and test[0].id == "HumanEval/100"
    completions = [p.meta["solution"] for p in train[:5]] + ["```python\ndef nope():\n    pass\n```"] * 5
    scores = score_batch(env, list(train), completions)
    assert [s.value for s in scores] == [1.0] * 5 + [0.0] * 5
    with pytest.raises(ValueError, match="train_size"):
        HumanEvalEnv(train_size=164)


def test_code_jsonl_env(tmp_path):
    rows = [
        {"id": "sq", "prompt": "Write square(x).", "entry_point": "square",
         "tests": "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n",
         "solution": "```python\ndef square(x):\n    return x * x\n```"},
        {"prompt": "Write twice(s).", "entry_point": "twice", "setup": "import string\n",
         "tests": "assert twice('ab') == 'abab'\nassert twice('') == ''\n"},
    ]
    path = tmp_path / "code.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    env = load_env("answerkey.envs.code_jsonl:CodeJSONLEnv", {"train_path": str(path), "timeout_s": 3.0})
    problems = env.problems("train")
    assert [p.id for p in problems] == ["sq", "code/code/1"]
    completions = [problems[0].meta["solution"], "def twice(s):\n    return s + s[:1]\n"]
    scores = score_batch(env, list(problems), completions)
    assert scores[0].status == Status.correct
    assert (scores[1].value, scores[1].status) == (0.5, Status.partial)
    path.write_text(json.dumps(rows[0] | {"tests": "def check(:"}))
    with pytest.raises(DatasetError, match=r"code.jsonl:1: field 'tests' is not valid Python"):
        load_env("answerkey.envs.code_jsonl:CodeJSONLEnv", {"train_path": str(path)}).problems("train")


def test_refuses_to_run_without_isolation_and_names_what_is_missing():
    """As an unprivileged user there are no namespaces, no uid drop and no cgroups: strict mode refuses."""
    script = textwrap.dedent("""
        import os, sys
        from answerkey.rewards.sandbox import Sandbox, SandboxUnavailable
        os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
        try:
            Sandbox(workers=1)
        except SandboxUnavailable as exc:
            print(exc)
            sys.exit(0)
        sys.exit("Sandbox() ran without isolation")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for words in ("namespaces (not running as root", "uid_drop", "cgroup_pids", "cgroup_memory",
                  "allow_weaker=True"):
        assert words in out.stdout


def test_weaker_mode_needs_the_opt_in_and_is_logged_on_every_run(caplog):
    with pytest.raises(SandboxUnavailable,
                       match=r"cgroup_pids \(disabled by the caller\).*allow_weaker=True"):
        Sandbox(workers=1, disable=["cgroups"])
    with Sandbox(workers=1, disable=["cgroups"], allow_weaker=True) as box, caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert [float(s) for s in run_tests_batch([Job(ADD, CHECK, "add", 5.0)], box)] == [0.8]
        # Without the cgroup, RLIMIT_NPROC (the uid is not root) still stops a fork bomb.
        bomb = ADD + ("import os, time\nfor _ in range(1000):\n"
                      "    if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)\n")
        assert run_tests_batch([Job(bomb, CHECK, "add", 5.0)], box)[0].value == 0.0
    warnings = [r.getMessage() for r in caplog.records if "WEAKER sandbox" in r.getMessage()]
    assert len(warnings) == 3 and "cgroup_memory (disabled by the caller)" in warnings[0]


def test_a_killed_worker_is_replaced_and_the_batch_completes():
    """The one job on the dead worker counts as an infrastructure error; its queued jobs run elsewhere."""
    slow = "def add(a, b):\n    import time\n    time.sleep(0.05)\n    return a + b\n"
    one = "def check(candidate):\n    assert candidate(1, 2) == 3\n"
    with Sandbox(workers=2) as box:
        victim = box.workers[0].proc.pid
        threading.Timer(0.3, os.kill, (victim, signal.SIGKILL)).start()
        scores = run_tests_batch([Job(slow, one, "add", 5.0)] * 30, box)
        assert sum(s.status == Status.error for s in scores) <= 1
        assert all(s.status == Status.correct for s in scores if s.status != Status.error)
        assert box.workers[0].proc.pid != victim
        assert [float(s) for s in run_tests_batch([Job(ADD, CHECK, "add", 5.0)] * 4, box)] == [0.8] * 4


def test_batch_rejects_bad_items():
    with pytest.raises(TypeError, match="item 0"):
        run_tests_batch([("def f(): pass", "", "f")])
    with pytest.raises(ValueError, match="timeout_s"):
        run_tests_batch([Job(ADD, CHECK, "add", timeout_s=0)])
    assert code_reward.sandbox() is code_reward.sandbox()  # one pool per process
