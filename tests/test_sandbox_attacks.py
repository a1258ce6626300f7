"""One adversarial test per sandbox property.

Each attack is written so that it can only score 1.0 if the attack works: a correct `add` plus an
attack that raises when stopped (reading a secret, deleting a file, reaching the network), or a
wrong `add` plus a trick that would make it pass (exit 0 before the asserts, an always-equal
object, patched builtins, reading the expected values). Where it is safe, the same program first
runs under the classic harness (`python file.py` with the tests appended, pass = exit status 0) to
show the attack really works there. After each attack, `assert_clean` checks the machine, not just
the score: no process of a sandbox uid is left, the slot cgroups are empty, the workers were not
killed, and the same pool still scores a correct solution 1.0.
"""

from __future__ import annotations

import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from answerkey.rewards import Status
from answerkey.rewards import code as code_reward
from answerkey.rewards.code import Job, run_tests_batch
from answerkey.rewards.sandbox.pool import FIRST_UID, JUDGE_UID, UID_CYCLE, UID_STRIDE

pytestmark = pytest.mark.slow  # attacks run in the sandbox's processes: make check leaves it out

SOLUTION = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"  # fails every assert of TESTS
TESTS = ("def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
         "    assert candidate(2.5, 0.25) == 2.75\n")
SECRET_VAR = "ANSWERKEY_ATTACK_SECRET"
SECRET = secrets.token_hex(8)


@pytest.fixture(scope="module")
def box():
    """A fresh process-wide pool, started while the caller's environment holds a secret."""
    os.environ[SECRET_VAR] = SECRET
    code_reward.configure(workers=2)
    pool = code_reward.sandbox()
    yield pool
    os.environ.pop(SECRET_VAR, None)


@pytest.fixture
def clean(box):
    """Yield, then check the machine after the attack."""
    workers = [w.proc.pid for w in box.workers]
    yield
    assert_clean(box, workers)


def sandboxed(box, program: str, tests: str = TESTS, timeout_s: float = 2.0):
    return run_tests_batch([Job(program, tests, "add", timeout_s)], box)[0]


def no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def plain(program: str, tests: str = TESTS, timeout: float = 20.0, **kwargs) -> float:
    """The classic harness: program, tests and `check(add)` in one file, `python file`; 1.0 iff exit
    status 0."""
    path = Path(f"/tmp/answerkey-plain-{os.getpid()}-{secrets.token_hex(4)}.py")
    path.write_text(f"{program}\n{tests}\ncheck(add)\n")
    try:
        out = subprocess.run([sys.executable, str(path)], timeout=timeout, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, preexec_fn=no_core_dumps, **kwargs)
    finally:
        path.unlink()
    return 1.0 if out.returncode == 0 else 0.0


CANDIDATE_UIDS = set(range(FIRST_UID, FIRST_UID + UID_STRIDE * UID_CYCLE))


def sandbox_processes(uids: set[int] = CANDIDATE_UIDS) -> list[int]:
    """Pids of every process on the machine running as one of `uids` (default: the candidates' uids)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
            if uid in uids:
                found.append(int(entry.name))
    return found


def wait_until_gone(timeout_s: float = 30.0) -> list[str]:
    """Candidate processes still alive after `timeout_s`, each described (state, parent, kernel stack).

    The kill is immediate, but a killed process finishes dying in the kernel: tearing down its mount
    namespace waits for an RCU grace period (`namespace_unlock` -> `synchronize_rcu_expedited`), which
    on a loaded machine can take far longer than the test. Such a process has already released its
    memory, cannot run user code again and is no longer listed in its cgroup; it is counted as gone
    once the kernel marks it exiting (PF_EXITING in /proc/PID/stat), so only a process that could
    still run is reported.
    """
    give_up = time.monotonic() + timeout_s
    while (left := live()) and time.monotonic() < give_up:
        time.sleep(0.05)
    return [describe(pid) for pid in left]


PF_EXITING = 0x4  # include/linux/sched.h: the process is in do_exit


def live(uids: set[int] = CANDIDATE_UIDS) -> list[int]:
    """Pids running as one of `uids` that are not exiting."""
    return [pid for pid in sandbox_processes(uids) if not exiting(pid)]


def exiting(pid: int) -> bool:
    """True when `pid` is gone or the kernel is tearing down every thread of it (PF_EXITING in the `flags`,
    field 9, of each /proc/PID/task/TID/stat)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True  # gone
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # this thread is gone
        if not int(stat.rsplit(")", 1)[1].split()[6]) & PF_EXITING:
            return False
    return True


def describe(pid: int) -> str:
    """`pid` with its state, parent, command line and kernel wait channel/stack, for a failure message."""
    proc = Path(f"/proc/{pid}")

    def read(name: str) -> str:
        try:
            return (proc / name).read_text(errors="replace").replace("\0", " ").strip()
        except OSError as exc:
            return f"<{type(exc).__name__}>"

    status = dict(line.split(":", 1) for line in read("status").splitlines() if ":" in line)
    fields = {k: status.get(k, "?").strip() for k in ("State", "PPid", "Uid", "Threads")}
    return (f"pid {pid} {fields} cmdline={read('cmdline')[:120]!r} wchan={read('wchan')!r} "
            f"stack={read('stack')[:400]!r}")


def judges(expected: int, timeout_s: float = 30.0) -> int:
    """Processes running as the judge's uid, once there are `expected` or after `timeout_s`. A judge replaced
    after a killed job is forked as root and drops to its uid a moment later (longer on a loaded machine)."""
    give_up = time.monotonic() + timeout_s
    while (n := len(live({JUDGE_UID}))) != expected and time.monotonic() < give_up:
        time.sleep(0.05)
    return n


def cgroup_leftovers(box, timeout_s: float = 30.0) -> list[str]:
    """Live processes in the slots' cgroups after `timeout_s` (a killed multi-threaded program stays listed
    until its last thread has left do_exit, so this waits like `wait_until_gone`)."""
    def left() -> list[int]:
        return [pid for slot in range(len(box.workers)) for pid in box.cgroups.pids_in(slot)
                if not exiting(pid)]

    give_up = time.monotonic() + timeout_s
    while (pids := left()) and time.monotonic() < give_up:
        time.sleep(0.05)
    return [describe(pid) for pid in pids]


def assert_clean(box, workers_before: list[int]) -> None:
    assert wait_until_gone() == []
    assert judges(len(box.workers)) == len(box.workers)  # one judge per worker, none leaked
    assert cgroup_leftovers(box) == []
    assert [w.proc.pid for w in box.workers] == workers_before, "a worker died and was restarted"
    assert all(w.proc.poll() is None for w in box.workers)
    again = run_tests_batch([Job(SOLUTION, TESTS, "add", 5.0)] * len(box.workers), box)
    assert [s.value for s in again] == [1.0] * len(box.workers)


# ---------------------------------------------------------------------------------------------


def test_infinite_loop(box, clean):
    program = SOLUTION + "while True:\n    pass\n"
    with pytest.raises(subprocess.TimeoutExpired):
        plain(program, timeout=1.0)
    score = sandboxed(box, program, timeout_s=1.0)
    assert (score.value, score.status) == (0.0, Status.timeout)


def test_loop_ignoring_sigterm_and_sigalrm(box, clean):
    program = SOLUTION + textwrap.dedent("""
        import signal
        for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.setitimer(signal.ITIMER_REAL, 0)
        while True:
            pass
    """)
    path = Path(f"/tmp/answerkey-sigterm-{os.getpid()}.py")
    path.write_text(program)
    proc = subprocess.Popen([sys.executable, str(path)])
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None, "plain subprocess: the loop should survive SIGTERM"
    proc.kill()
    proc.wait()
    path.unlink()
    score = sandboxed(box, program, timeout_s=1.0)
    assert (score.value, score.status) == (0.0, Status.timeout)


def test_fork_bomb(box, clean):
    """10 000 sleeping children: the cgroup pids limit (64) makes fork fail, so the program fails before
    its tests."""
    program = SOLUTION + textwrap.dedent("""
        import os, time
        for _ in range(10000):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
    """)
    score = sandboxed(box, program, timeout_s=5.0)
    assert score.value == 0.0 and score.status == Status.wrong
    assert "BlockingIOError" in score.detail or "Resource temporarily unavailable" in score.detail


def test_memory_bomb(box, clean):
    program = SOLUTION + "block = b'x' * (768 << 20)\n"
    assert plain(program) == 1.0
    score = sandboxed(box, program, timeout_s=10.0)
    assert (score.value, score.status) == (0.0, Status.wrong)


def test_one_gigabyte_stdout_flood_leaves_the_caller_flat(box, clean):
    program = SOLUTION + ("import sys\nchunk = 'x' * (1 << 20)\n"
                          "for _ in range(1024):\n    sys.stdout.write(chunk)\nsys.stdout.flush()\n")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
    before = _vm("VmRSS")
    score = sandboxed(box, program, timeout_s=20.0)
    assert score.value == 1.0  # the flood went to /dev/null; the program itself is correct
    assert _vm("VmHWM") - before < 64 << 20


def _vm(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1]) * 1024


def test_writing_and_deleting_files_outside(box, clean, tmp_path):
    tmp_path.chmod(0o777)
    victim, marker = tmp_path / "victim", tmp_path / "marker"
    program = SOLUTION + f"import os\nos.remove({str(victim)!r})\nopen({str(marker)!r}, 'w').write('pwned')\n"
    victim.write_text("keep me")
    victim.chmod(0o666)
    assert plain(program) == 1.0 and not victim.exists() and marker.exists()
    marker.unlink()
    victim.write_text("keep me")
    assert sandboxed(box, program).value == 0.0
    assert victim.read_text() == "keep me" and not marker.exists()


def _home_file() -> str:
    home = Path(os.path.expanduser("~"))
    files = sorted(p for p in home.iterdir() if p.is_file()) if home.is_dir() else []
    return str(files[0]) if files else str(home)


@pytest.mark.parametrize("attack", [
    "assert 'root:' in open('/etc/shadow').read()",
    "assert open(HOME_FILE).read() is not None",
    "assert os.environ.get(SECRET_VAR) == SECRET",
    "assert SECRET in open('/proc/self/environ').read()",
])
def test_reading_secrets(box, clean, attack):
    program = SOLUTION + (f"import os\nHOME_FILE, SECRET_VAR, SECRET = {_home_file()!r}, {SECRET_VAR!r}, "
                          f"{SECRET!r}\n{attack}\n")
    assert plain(program) == 1.0
    assert sandboxed(box, program).value == 0.0


def test_connecting_to_a_loopback_listener(box, clean):
    server = socket.create_server(("127.0.0.1", 0))
    port, accepted = server.getsockname()[1], []

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    stop = threading.Event()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    program = SOLUTION + (f"import socket\n"
                          f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n")
    try:
        assert plain(program) == 1.0
        time.sleep(0.3)
        assert len(accepted) == 1
        score = sandboxed(box, program)
        time.sleep(0.3)
        assert score.value == 0.0 and "OSError" in score.detail
        assert len(accepted) == 1, "the sandboxed program reached the listener"
    finally:
        stop.set()
        thread.join()
        server.close()


def test_killing_or_stopping_the_parent(box, clean):
    attack = textwrap.dedent("""
        import os, signal
        os.kill(TARGET, signal.SIGSTOP)
        os.kill(TARGET, signal.SIGKILL)
        os.kill(CALLER, 0)
    """)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert plain(SOLUTION + f"TARGET, CALLER = {victim.pid}, {os.getpid()}\n" + attack) == 1.0
    assert victim.wait(timeout=5) == -signal.SIGKILL
    worker = box.workers[0].proc.pid
    targeted = sandboxed(box, SOLUTION + f"TARGET, CALLER = {worker}, {os.getpid()}\n" + attack)
    assert targeted.value == 0.0 and "ProcessLookupError" in targeted.detail  # the worker is not even visible
    blind = textwrap.dedent("""
        import os, signal
        for target in (os.getppid(), -1):  # its parent, then every process it may signal
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
    """)
    scores = run_tests_batch([Job(SOLUTION + blind, TESTS, "add", 2.0)] * 4, box)
    assert [s.value for s in scores] == [1.0] * 4  # it reached nothing outside its own namespace


def test_double_forked_daemon(box, clean, tmp_path):
    tmp_path.chmod(0o777)
    marker = tmp_path / "marker"
    program = SOLUTION + textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1.0)
                for path in ({str(marker)!r}, "/tmp/marker"):
                    try:
                        open(path, "w").write("still alive")
                    except OSError:
                        pass
            os._exit(0)
    """)
    assert plain(program) == 1.0
    time.sleep(1.5)
    assert marker.exists(), "plain subprocess: the daemon outlived its program"
    marker.unlink()
    assert sandboxed(box, program).value == 1.0  # the solution is right; the daemon must be gone with it
    assert wait_until_gone() == []
    time.sleep(1.5)
    assert not marker.exists()


@pytest.mark.parametrize("exit_call",
                         ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"])
def test_exit_before_the_asserts(box, clean, exit_call):
    assert plain(WRONG + exit_call + "\n") == 1.0
    for program in (WRONG, SOLUTION):
        score = sandboxed(box, program + exit_call + "\n")
        assert score.value == 0.0 and score.status == Status.wrong


@pytest.mark.parametrize("cheat", [
    "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
    "def add(a, b):\n    return Yes()\n",
    "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
    "def add(a, b):\n    return Int(0)\n",
])
def test_eq_always_true(box, clean, cheat):
    assert plain(cheat) == 1.0
    score = sandboxed(box, cheat)
    assert score.value == 0.0 and "only exact built-in types" in score.detail


@pytest.mark.parametrize(("cheat", "tests"), [
    ("import builtins\nbuiltins.abs = lambda x: 0\n",
     "def check(candidate):\n    assert abs(candidate(0.1, 0.2) - 0.3) < 1e-6\n"
     "    assert abs(candidate(1.5, 1) - 2.5) < 1e-6\n"),
    ("import atexit, os\natexit.register(os._exit, 0)\n", TESTS),
    ("import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n", TESTS),
])
def test_overriding_builtins_or_the_assert_machinery(box, clean, cheat, tests):
    assert plain(WRONG + cheat, tests) == 1.0
    assert sandboxed(box, WRONG + cheat, tests).value == 0.0


@pytest.mark.parametrize("lookup", [
    "frame = sys._getframe(1)\n    while frame.f_code.co_name != 'check':\n        frame = frame.f_back\n"
    "    source = open(frame.f_code.co_filename).read()",
    "check = next(o for o in gc.get_objects() if getattr(o, '__name__', '') == 'check')\n"
    "    source = inspect.getsource(check)",
])
def test_reading_the_tests_or_expected_values(box, clean, lookup):
    """The cheat looks up `candidate(a, b) == <expected>` in the tests' source and returns the expected
    value."""
    cheat = textwrap.dedent("""
        import gc, inspect, re, sys
        def add(a, b):
            LOOKUP
            return eval(re.search(r"candidate\\(%r, %r\\) == (.+)" % (a, b), source).group(1))
    """).replace("LOOKUP", lookup)
    assert plain(cheat) == 1.0
    assert sandboxed(box, cheat).value == 0.0


def test_ctypes_segfault(box, clean):
    program = SOLUTION + "import ctypes\nctypes.string_at(0)\n"
    path = Path(f"/tmp/answerkey-segv-{os.getpid()}.py")
    path.write_text(program)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, preexec_fn=no_core_dumps)
    assert out.returncode == -signal.SIGSEGV
    path.unlink()
    score = sandboxed(box, program)
    assert score.value == 0.0 and score.status == Status.wrong


def test_deep_recursion(box, clean):
    """Past the C stack (hashing a 10**6-deep tuple segfaults the interpreter), and endless Python
    recursion."""
    program = SOLUTION + ("import sys\nsys.setrecursionlimit(10 ** 8)\nx = ()\n"
                          "for _ in range(10 ** 6):\n    x = (x,)\nhash(x)\n")
    path = Path(f"/tmp/answerkey-recursion-{os.getpid()}.py")
    path.write_text(program)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, timeout=60,
                         preexec_fn=no_core_dumps)
    assert out.returncode == -signal.SIGSEGV
    path.unlink()
    assert sandboxed(box, program, timeout_s=10.0).value == 0.0
    endless = "def add(a, b):\n    return add(a, b)\n"
    score = sandboxed(box, endless)
    assert score.value == 0.0 and "RecursionError" in score.detail


def test_stray_threads(box, clean):
    """A thread that rewrites the exit status after the failed assert, and threads that never stop."""
    rewrite = ("import threading, time, os\n"
               "threading.Thread(target=lambda: (time.sleep(0.5), os._exit(0))).start()\n")
    assert plain(WRONG + rewrite) == 1.0
    assert sandboxed(box, WRONG + rewrite).value == 0.0
    spinners = ("import threading\nfor _ in range(8):\n"
                "    threading.Thread(target=lambda: [0 for _ in iter(int, 1)]).start()\n")
    # answered, not timed out
    assert sandboxed(box, SOLUTION + spinners, timeout_s=10.0).status == Status.correct


def test_input_on_stdin(box, clean):
    program = SOLUTION + "line = input()\n"
    proc = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)  # plain subprocess: the pipe stays open and it waits forever
    proc.kill()
    proc.wait()
    proc.stdin.close()
    score = sandboxed(box, program, timeout_s=5.0)
    assert score.value == 0.0 and score.status == Status.wrong and "EOFError" in score.detail  # not a timeout


def test_huge_integer_arithmetic(box, clean):
    program = SOLUTION + "x = 10 ** (10 ** 9)\n"
    with pytest.raises(subprocess.TimeoutExpired):
        plain(program, timeout=1.0)
    score = sandboxed(box, program, timeout_s=1.0)
    assert score.value == 0.0 and score.status in (Status.timeout, Status.wrong)
