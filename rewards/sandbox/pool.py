"""The sandbox pool: run untrusted Python programs against tests, many at a time, isolated and killed.

    with Sandbox(workers=2) as box:            # raises SandboxUnavailable if isolation is missing
        outcomes = box.run([Job(program, tests, "add", timeout_s=5.0), ...])
        outcomes[0].units                      # (True, True, False): one flag per assert

Each worker (`worker.py`) is a warm `python -I -S` started with an empty environment that forks an
isolated child per job: fresh pid/net/mount/ipc/uts namespaces, a read-only root with a private
tmpfs, an unprivileged uid (from its slot's range, a new one each job), rlimits, and a per-slot
cgroup bounding processes and memory. The tests run in a separate judge process (`judge.py`) that
the program cannot reach. Program and tests go to the worker as memfds, the result comes back
tagged with a per-job nonce that only the judge saw; the exit status and output of the program are
never looked at.

Before running anything, `Sandbox()` checks that the isolation is really there: it creates the
cgroups and reads the limits back, starts the workers (which build their namespaces), and runs a
probe program through the real path whose tests assert each property from inside (pid 1, no
network interface but `lo`, nothing but the read-only root, a non-root uid with no_new_privs,
rlimits, an empty environment, a fork and a memory bomb stopped by the cgroup). Anything missing raises
`SandboxUnavailable` naming it; `allow_weaker=True` runs without what the machine cannot provide
and logs a warning naming it on every `run`. It does not offer seccomp filtering or a VM boundary:
the kernel is shared with the caller.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from answerkey.rewards.sandbox.cgroup import CgroupError, SlotCgroups
from answerkey.rewards.sandbox.probe import PROBE_PROGRAM, probe_tests

log = logging.getLogger(__name__)
WORKER = Path(__file__).with_name("worker.py")  # run as a script, not imported
FEATURES = ("namespaces", "uid_drop", "cgroup_pids", "cgroup_memory")
JUDGE_UID, FIRST_UID = 60999, 61000  # the judge's uid; slot i's jobs run as FIRST_UID + i + UID_STRIDE * k
UID_STRIDE, UID_CYCLE = 64, 1024  # so candidate uids are FIRST_UID .. FIRST_UID + 64 * 1024 (slots <= 64)
BACKSTOP_S = 15.0  # beyond a job's own timeout, how long the caller waits before killing its worker
MAX_RESULT = 4 << 20  # bytes of one judge result
QUEUE = 2  # jobs handed to one worker at a time: it starts the next as soon as one ends


class SandboxUnavailable(RuntimeError):
    """The isolation the sandbox promises is not available here; the message lists what is missing."""


@dataclass(frozen=True)
class Limits:
    """Per-execution bounds. The wall clock is per job (`Job.timeout_s`)."""

    memory_bytes: int = 512 << 20  # the whole process tree (cgroup)
    processes: int = 64  # processes + threads in the tree (cgroup pids.max)
    file_bytes: int = 16 << 20  # largest file the program may write (RLIMIT_FSIZE)
    tmp_bytes: int = 64 << 20  # size of its private /tmp
    open_files: int = 64  # RLIMIT_NOFILE


@dataclass(frozen=True)
class Job:
    program: str  # defines `entry_point`
    tests: str  # defines check(candidate), or MBPP-style top-level asserts calling the entry point
    entry_point: str
    timeout_s: float = 5.0  # wall clock for loading the program and running every test
    prelude: str = ""  # trusted code the tests may call (e.g. HumanEval prompt helpers), run in the judge


@dataclass(frozen=True)
class Outcome:
    """What one execution showed.

    `load`: ok | syntax | raised | missing | exited | timeout | infra | judge_error."""

    load: str
    units: tuple[bool, ...] = ()  # one flag per counted assert, in order (empty unless load == "ok")
    detail: str = ""  # the load error, or the first failed units
    wall_s: float = 0.0


class _Worker:
    """One `worker.py` process and its socket."""

    def __init__(self, slot: int, config: dict, log_dir: str):
        self.slot, self.config = slot, config
        self.log_path = os.path.join(log_dir, f"worker{slot}.log")
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = self.config | {"sock_fd": theirs.fileno()}
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(WORKER), json.dumps(config)], env={}, cwd="/",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                pass_fds=[theirs.fileno()], start_new_session=True)
        theirs.close()
        self.sock = ours
        ours.settimeout(timeout_s)
        try:
            hello = json.loads(ours.recv(1 << 16) or b"{}")
        except (TimeoutError, ValueError) as exc:
            hello = {"fatal": f"no ready message ({exc!r})"}
        ours.settimeout(None)
        if "ready" not in hello:
            self.stop()
            raise SandboxUnavailable(f"sandbox worker {self.slot} failed to start: "
                                     f"{hello.get('fatal', 'exited')} (log: {self.log_path})")

    def submit(self, job: Job, job_id: int, nonce: str) -> int:
        """Send the job; returns the memfd the judge will write the result into (the caller closes it)."""
        program = _memfd("program", job.program.encode("utf-8", "surrogatepass"))
        tests = _memfd("tests", json.dumps({"tests": job.tests, "prelude": job.prelude,
                                            "entry_point": job.entry_point, "nonce": nonce}).encode())
        result = _memfd("result", b"")
        header = {"job": job_id, "entry_point": job.entry_point, "timeout_s": job.timeout_s}
        try:
            socket.send_fds(self.sock, [json.dumps(header).encode()], [program, tests, result])
        except OSError:
            os.close(result)
            raise
        finally:
            os.close(program)
            os.close(tests)
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        if self.sock is not None:
            self.sock.close()
        self.proc = self.sock = None


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(f"answerkey-{name}", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return fd


def detect_features() -> dict[str, str]:
    """feature -> why it is missing here ("" when it looks available; the probe has the last word)."""
    missing = {}
    if os.geteuid() != 0:
        reason = (f"not running as root (euid {os.geteuid()}): unshare(CLONE_NEWPID|NEWNET|NEWNS) "
                  f"and setuid need it")
        missing |= {"namespaces": reason, "uid_drop": reason}
    if not hasattr(os, "memfd_create") or sys.platform != "linux":
        raise SandboxUnavailable("the sandbox needs Linux (memfd_create, namespaces, cgroups)")
    return {f: missing.get(f, "") for f in FEATURES}


class Sandbox:
    """A pool of sandbox workers; `run` executes a batch of jobs on them, in parallel."""

    def __init__(self, workers: int = 2, limits: Limits | None = None, allow_weaker: bool = False,
                 disable: Sequence[str] = ()):
        """`disable`: isolation to leave off on purpose ("namespaces", "uid_drop", "cgroups"), e.g. in a
        container without cgroup delegation; like anything missing, it needs `allow_weaker=True`."""
        if not 1 <= workers <= UID_STRIDE:
            raise ValueError(f"Sandbox: workers must be in [1, {UID_STRIDE}], got {workers}")
        unknown = set(disable) - {"namespaces", "uid_drop", "cgroups"}
        if unknown:
            raise ValueError(f"Sandbox: disable has unknown feature(s) {sorted(unknown)}; "
                             f"known: namespaces, uid_drop, cgroups")
        limits = limits or Limits()
        self.limits, self.allow_weaker = limits, allow_weaker
        self._tmp = tempfile.mkdtemp(prefix="answerkey-sandbox-")
        os.chmod(self._tmp, 0o755)
        self.workers: list[_Worker] = []
        self._resources: dict = {"workers": self.workers, "cgroups": None, "tmp": self._tmp}
        self._finalizer = weakref.finalize(self, _cleanup, self._resources)
        missing = {f: why for f, why in detect_features().items() if why}
        missing |= {f: "disabled by the caller" for f in disable if f != "cgroups"}
        self.cgroups: SlotCgroups | None = None
        if "cgroups" in disable:
            missing |= {"cgroup_pids": "disabled by the caller", "cgroup_memory": "disabled by the caller"}
        else:
            try:
                self.cgroups = SlotCgroups.create(workers, limits.processes, limits.memory_bytes)
            except CgroupError as exc:
                missing |= {"cgroup_pids": str(exc), "cgroup_memory": str(exc)}
        self._resources["cgroups"] = self.cgroups
        self.missing = missing
        if missing and not allow_weaker:
            self.close()
            raise SandboxUnavailable(self._missing_text()
                                     + "; pass allow_weaker=True to run without it (logged every run)")
        self.features = [f for f in FEATURES if f not in missing]
        try:
            for slot in range(workers):
                worker = _Worker(slot, self._worker_config(slot), self._tmp)
                self.workers.append(worker)
                worker.start()
            self._preflight()
        except BaseException:
            self.close()
            raise

    def _missing_text(self) -> str:
        return "sandbox isolation missing: " + "; ".join(f"{f} ({why})" for f, why in self.missing.items())

    def _worker_config(self, slot: int) -> dict:
        stdlib = sorted({os.path.dirname(os.__file__),
                         os.path.dirname(getattr(math, "__file__", os.__file__))})
        return {"slot": slot, "uid": FIRST_UID + slot, "uid_stride": UID_STRIDE, "uid_cycle": UID_CYCLE,
                "judge_uid": JUDGE_UID,
                "root": self._tmp, "stdlib": [p for p in stdlib if not p.startswith("/usr/")],
                "features": self.features,
                "cgroup_procs": self.cgroups.procs_files(slot) if self.cgroups else [],
                "limits": {"memory_bytes": self.limits.memory_bytes, "processes": self.limits.processes,
                           "file_bytes": self.limits.file_bytes, "tmp_bytes": self.limits.tmp_bytes,
                           "open_files": self.limits.open_files}}

    def _preflight(self) -> None:
        """Run the probe through every worker; a failed assert names an isolation property that is
        missing."""
        tests = probe_tests(self.features, self.limits)
        outcomes = self.run([Job(PROBE_PROGRAM, tests, "probe", timeout_s=30.0)] * len(self.workers),
                            _probe=True)
        for slot, outcome in enumerate(outcomes):
            if outcome.load != "ok" or not all(outcome.units):
                raise SandboxUnavailable(f"sandbox self-check failed on worker {slot}: "
                                         f"{outcome.load}: {outcome.detail}")

    def run(self, jobs: Sequence[Job], _probe: bool = False) -> list[Outcome]:
        """Execute every job (in parallel over the workers); one `Outcome` per job, in order.

        Each worker holds up to `QUEUE` jobs, so it starts the next one as soon as one ends; a job's
        backstop deadline starts when it reaches the head of its worker's queue."""
        if not self.workers:
            raise RuntimeError("Sandbox is closed")
        if self.missing and not _probe:
            log.warning("running untrusted code in a WEAKER sandbox: %s", self._missing_text())
        results: list[Outcome | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        queues: dict[int, deque[list]] = {w.slot: deque() for w in self.workers if w.proc is not None}
        by_slot = {w.slot: w for w in self.workers}
        with selectors.DefaultSelector() as selector:
            for slot in queues:
                selector.register(by_slot[slot].sock, selectors.EVENT_READ, slot)
            while pending or any(queues.values()):
                self._fill(jobs, pending, queues, by_slot, results, selector)
                heads = [q[0][2] for q in queues.values() if q]
                if not heads:
                    break
                ready = {key.data for key, _ in selector.select(max(0.0, min(heads) - time.monotonic()))}
                for slot in list(queues):
                    queue = queues[slot]
                    if queue and (slot in ready or time.monotonic() >= queue[0][2]):
                        self._finish_head(slot, queue, slot in ready, jobs, pending, queues, by_slot, results,
                                          selector)
        for i, r in enumerate(results):
            if r is None:
                results[i] = Outcome("infra", detail="no sandbox worker could run this job")
        return results  # type: ignore[return-value]

    def _fill(self, jobs, pending, queues, by_slot, results, selector) -> None:
        """Hand pending jobs to workers with room in their queue, breadth first (so N jobs on N workers
        run one per worker: the self-check relies on it). Queue items: [index, nonce, deadline, fd]."""
        for depth in range(QUEUE):
            for slot in list(queues):
                if not pending or slot not in queues or len(queues[slot]) > depth:
                    continue
                index, nonce = pending.popleft(), secrets.token_hex(16)
                try:
                    result_fd = by_slot[slot].submit(jobs[index], index, nonce)
                except OSError as exc:
                    results[index] = Outcome("infra", detail=f"could not submit to worker {slot}: {exc}")
                    self._replace(slot, pending, queues, by_slot, selector)
                    continue
                deadline = time.monotonic() + jobs[index].timeout_s + BACKSTOP_S if not queues[slot] else 0.0
                queues[slot].append([index, nonce, deadline, result_fd])

    def _finish_head(self, slot, queue, readable, jobs, pending, queues, by_slot, results, selector) -> None:
        index, nonce, _, result_fd = queue.popleft()
        try:
            results[index], healthy = self._collect(by_slot[slot], index, nonce, readable, result_fd)
        finally:
            os.close(result_fd)
        if not healthy:
            self._replace(slot, pending, queues, by_slot, selector)
        elif queue:
            queue[0][2] = time.monotonic() + jobs[queue[0][0]].timeout_s + BACKSTOP_S

    def _replace(self, slot, pending, queues, by_slot, selector) -> None:
        """Restart a misbehaving worker; its queued jobs go back to the front of `pending`."""
        for index, _, _, result_fd in reversed(queues[slot]):
            os.close(result_fd)
            pending.appendleft(index)
        queues[slot].clear()
        selector.unregister(by_slot[slot].sock)
        if self._restart(by_slot[slot]):
            selector.register(by_slot[slot].sock, selectors.EVENT_READ, slot)
        else:
            del queues[slot]

    def _collect(self, worker: _Worker, index: int, nonce: str, readable: bool,
                 result_fd: int) -> tuple[Outcome, bool]:
        """The outcome of the job on `worker`, and whether the worker can take another job."""
        if not readable:
            return Outcome("infra", detail=f"worker {worker.slot} did not answer within the backstop"), False
        try:
            reply = json.loads(worker.sock.recv(1 << 20) or b"null")
        except (OSError, ValueError) as exc:
            return Outcome("infra", detail=f"worker {worker.slot}: unreadable reply ({exc})"), False
        if not isinstance(reply, dict) or reply.get("job") != index:
            return Outcome("infra", detail=f"worker {worker.slot} died or answered out of turn"), False
        wall = float(reply.get("wall_s", 0.0))
        if reply["start_error"]:
            return Outcome("infra", detail=f"sandbox start failed: {reply['start_error']}", wall_s=wall), True
        if reply["timed_out"]:
            return Outcome("timeout", detail="ran past its wall-clock limit and was killed",
                           wall_s=wall), True
        try:
            result = json.loads(os.pread(result_fd, MAX_RESULT, 0))
        except ValueError:
            return Outcome("infra", detail="the judge wrote no result", wall_s=wall), True
        if result.get("nonce") != nonce:
            return Outcome("infra", detail="result channel nonce mismatch: not this job's result",
                           wall_s=wall), True
        units = tuple(bool(ok) for ok, _ in result.get("units", []))
        errors = [msg for ok, msg in result.get("units", []) if not ok][:3]
        detail = result.get("error", "") or "; ".join(errors)
        return Outcome(str(result.get("load")), units, detail, wall), True

    def _restart(self, worker: _Worker) -> list[_Worker]:
        """Kill a worker that misbehaved (and everything in its cgroup) and start a fresh one."""
        worker.stop()
        if self.cgroups:
            self.cgroups.kill_all(worker.slot)
        try:
            worker.start()
        except SandboxUnavailable as exc:
            log.error("sandbox worker %d could not be restarted: %s", worker.slot, exc)
            return []
        return [worker]

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cleanup(resources: dict) -> None:
    """Stop the workers, empty and remove the cgroups, remove the root mount point (also at exit)."""
    for worker in resources["workers"]:
        worker.stop()
    resources["workers"].clear()
    if resources["cgroups"] is not None:
        resources["cgroups"].remove()
    shutil.rmtree(resources["tmp"], ignore_errors=True)
