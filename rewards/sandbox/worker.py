"""One slot of the sandbox pool: a warm interpreter that forks an isolated child per execution.

Started by `pool.Sandbox` as `python -I -S worker.py CONFIG_JSON` with an empty
environment and one Unix socket (fd given in the config). It never reads a job's program, tests or
result itself: each job arrives as a small header plus three memfds (program, tests, result), so
the memory that a candidate inherits by `fork` holds no test, no expected value, no nonce and no
earlier job's result.

At start it builds, in a private mount namespace, the read-only root the candidates will see
(/usr, the stdlib, /dev/null...; no /etc, /home, /root contents, /proc or /sys), imports the usual
stdlib modules, and forks the judge: a persistent process, with its own unprivileged uid and not
dumpable, that runs each job's tests (`judge.run_judge`) and never loads a program.

Per job:
  candidate  unshare(pid, net, mount, ipc, uts) in the worker, fork, setns back: the child is pid 1
             of a fresh pid namespace with only a down `lo` for a network. It joins the slot's
             cgroups (pids, memory), mounts a private tmpfs on /tmp, chroots into the read-only
             root, sets rlimits (CPU, file size, open files, core), points stdin/stdout/stderr at
             /dev/null, drops to a uid from the slot's range, a new one each job (no groups, no
             capabilities, no_new_privs), then runs the program and answers calls of the entry
             point over a socketpair.
  judge      gets the tests memfd, its end of the socketpair and the result memfd; writes the
             result, tagged with the job's nonce, into the result memfd (read by the caller).
The worker waits for the judge or the wall-clock deadline, then SIGKILLs pid 1 (the kernel kills
everything else in the namespace, daemons included), kills whatever is still in the cgroup, reaps,
and replaces the judge if it did not finish. It answers the caller with timings and errors only.

Isolation features may be switched off only by the caller's explicit weaker mode (`features` in
the config); this file does what it is told and reports failures as `{"fatal": ...}`.
Stdlib only.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import time

# A bare `python -I -S` puts neither this folder nor site-packages on the path: judge.py and wire.py
# are imported from here by file name, as top-level modules.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from judge import run_judge, serve_candidate  # noqa: E402
from wire import send_frame  # noqa: E402

# Modules a typical program imports, loaded once here so every fork starts warm.
WARM = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "typing",
        "random", "statistics", "fractions", "decimal", "hashlib", "copy", "operator", "datetime",
        "json", "ast", "dataclasses", "enum", "textwrap", "unicodedata", "array", "struct", "numbers")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 4, 36, 38
_libc = ctypes.CDLL(None, use_errno=True)
JUDGE_MEMORY = 4 << 30  # address space of the judge process (RLIMIT_AS)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s):
        return (s.encode() if s is not None else None)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {fstype or source} on {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


# ---------------------------------------------------------------------------------------------
# Once per worker: a private mount namespace holding the read-only root the candidates see.


def build_root(root: str, extra_ro: list[str]) -> None:
    """A tmpfs at `root` with read-only binds of what Python needs, then remounted read-only."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in ["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", *extra_ro]:
        if not os.path.lexists(path):
            continue
        target = root + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(path), target)
            continue
        os.makedirs(target, exist_ok=True)
        mount(path, target, None, MS_BIND | MS_REC)
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for path in extra_ro:  # the interpreter's own site-packages: not part of what a program may read
        if os.path.isdir(path + "/site-packages"):
            mount("tmpfs", root + path + "/site-packages", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV,
                  "size=4k")
    os.makedirs(root + "/dev")
    for dev in ("null", "zero", "urandom", "random"):
        open(f"{root}/dev/{dev}", "w").close()
        mount(f"/dev/{dev}", f"{root}/dev/{dev}", None, MS_BIND)
        mount(None, f"{root}/dev/{dev}", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
    os.mkdir(root + "/tmp")
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


# ---------------------------------------------------------------------------------------------
# Per job.


def close_fds_except(keep: set[int]) -> None:
    lo = 3
    for fd in sorted(f for f in keep if f >= 3):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 65536)


def read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def sandboxed_child(cfg: dict, job: dict, program_fd: int, rpc: socket.socket, cgroup_procs: list[str],
                    uid: int) -> None:
    """pid 1 of the namespace: lock itself in, drop privileges, run the program (never returns)."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        for procs in cgroup_procs:
            with open(procs, "w") as f:
                f.write("0")  # "0": the writing process
        limits, features = cfg["limits"], cfg["features"]
        program = read_fd(program_fd).decode("utf-8", "surrogatepass")
        if "namespaces" in features:
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            mount("tmpfs", cfg["root"] + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
                  f"size={limits['tmp_bytes']},nr_inodes=4096,mode=1777")
            socket.sethostname("sandbox")
            os.chroot(cfg["root"])
            os.chdir("/tmp")
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        set_rlimits(limits, float(job["timeout_s"]), features)
        if "uid_drop" in features:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        prctl(PR_SET_DUMPABLE, 0)
        os.environ.clear()
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    except BaseException as exc:  # noqa: BLE001 - the judge reports it as an infrastructure error
        try:
            send_frame(rpc, {"load": "infra", "error": f"sandbox set-up: {type(exc).__name__}: {exc}"})
        finally:
            os._exit(70)
    try:
        serve_candidate(program, job["entry_point"], rpc)
    finally:
        os._exit(0)


def set_rlimits(limits: dict, timeout_s: float, features: list[str]) -> None:
    cpu = int(timeout_s) + 2  # the wall clock (outside) is the real bound; this stops a lost CPU hog
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if "cgroup_pids" not in features:  # weaker mode: per-uid, and only binding once the uid is not root
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    if "cgroup_memory" not in features:  # weaker mode: bounds each process, not their sum
        resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))


class Namespaces:
    """Enter fresh namespaces for the next fork, then return to the worker's own (fds kept open)."""

    KINDS = (("pid", CLONE_NEWPID), ("net", CLONE_NEWNET), ("mnt", CLONE_NEWNS), ("ipc", CLONE_NEWIPC),
             ("uts", CLONE_NEWUTS))

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.own = {kind: os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
                    for kind, _ in self.KINDS}

    def fresh(self) -> None:
        """The worker moves into new net/mnt/ipc/uts namespaces; its next child is pid 1 of a new pid
        namespace."""
        if self.enabled:
            unshare(CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)

    def restore(self) -> None:
        """Back to the worker's own namespaces; the fresh ones now belong to the child alone."""
        if self.enabled:
            for kind, flag in self.KINDS:
                _check(_libc.setns(self.own[kind], flag), f"setns({kind})")


def judge_loop(cfg: dict, sock: socket.socket) -> None:
    """The persistent judge: per job, run the tests against the candidate, write the result to a memfd.

    Forked before any job, so it shares no memory with a candidate; it never runs a candidate's code."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if "namespaces" in cfg["features"]:  # the same read-only view as the candidates: the stdlib, no more
            os.chroot(cfg["root"])
            os.chdir("/")
        if "uid_drop" in cfg["features"]:
            os.setgroups([])
            os.setresgid(cfg["judge_uid"], cfg["judge_uid"], cfg["judge_uid"])
            os.setresuid(cfg["judge_uid"], cfg["judge_uid"], cfg["judge_uid"])
        prctl(PR_SET_DUMPABLE, 0)
        # Outside the cgroup, so bound it here: what a candidate sends it is bounded by the frame size.
        resource.setrlimit(resource.RLIMIT_AS, (JUDGE_MEMORY, JUDGE_MEMORY))
        while True:
            data, fds, _, _ = socket.recv_fds(sock, 1024, 3)
            if not data or len(fds) != 3:
                return
            tests_fd, rpc_fd, result_fd = fds
            with socket.socket(fileno=rpc_fd) as rpc:
                result = judge_one(read_fd(tests_fd), rpc)
            view = memoryview(json.dumps(result).encode())
            while view:
                view = view[os.write(result_fd, view):]
            os.close(result_fd)
            sock.send(b"D")
    finally:
        os._exit(0)


def judge_one(payload_bytes: bytes, rpc: socket.socket) -> dict:
    payload = json.loads(payload_bytes)
    try:
        result = run_judge(payload["tests"], payload["prelude"], payload["entry_point"], rpc)
    except Exception as exc:  # noqa: BLE001 - the tests themselves failed: not the candidate's fault
        result = {"load": "judge_error", "error": f"{type(exc).__name__}: {exc}"[:500]}
    result["nonce"] = payload["nonce"]
    return result


class Worker:
    """The job loop: one judge process kept warm, one fresh namespace set and pid 1 per job."""

    def __init__(self, cfg: dict, sock: socket.socket):
        self.cfg, self.sock = cfg, sock
        self.namespaces = Namespaces("namespaces" in cfg["features"])
        self.judge_pid, self.judge_sock = 0, None
        self.jobs = 0  # jobs run; alternate jobs use the two halves of the slot's cgroup
        self.start_judge()

    def uid(self) -> int:
        """This job's uid: the slot's own range, a different uid for each of `uid_cycle` consecutive jobs,
        so that nothing the kernel keys by uid (keyrings, RLIMIT_NPROC) carries from one job to the next."""
        return self.cfg["uid"] + self.cfg["uid_stride"] * (self.jobs % self.cfg["uid_cycle"])

    def start_judge(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid, self.judge_pidfd = fork_with_pidfd()
        if pid == 0:
            close_fds_except({theirs.fileno()})
            judge_loop(self.cfg, theirs)
        theirs.close()
        self.judge_pid, self.judge_sock = pid, ours

    def stop_judge(self) -> None:
        kill_pidfd(self.judge_pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.judge_pid, 0)
        self.judge_sock.close()

    def run_job(self, job: dict, program_fd: int, tests_fd: int, result_fd: int) -> dict:
        """Fork pid 1 of fresh namespaces, hand the tests to the judge, wait for it or the deadline, kill,
        reap."""
        started = time.monotonic()
        deadline = started + float(job["timeout_s"])
        rpc_judge, rpc_candidate = socket.socketpair()
        init_pid, init_pidfd, start_error = 0, -1, ""
        halves = self.cfg["cgroup_procs"]
        cgroup = halves[self.jobs % 2] if halves else []
        self.jobs += 1
        try:
            vacate(cgroup)
            self.namespaces.fresh()
            try:
                init_pid, init_pidfd = fork_with_pidfd()
                if init_pid == 0:
                    close_fds_except({program_fd, rpc_candidate.fileno()})
                    sandboxed_child(self.cfg, job, program_fd, rpc_candidate, cgroup, self.uid())
            finally:
                self.namespaces.restore()
        except (OSError, RuntimeError) as exc:
            start_error = str(exc)
        os.close(program_fd)
        rpc_candidate.close()
        done = False
        if init_pid:
            socket.send_fds(self.judge_sock, [b"J"], [tests_fd, rpc_judge.fileno(), result_fd])
            if _wait_readable(self.judge_sock, deadline):
                done = self.judge_sock.recv(16) == b"D"
                start_error = "" if done else "the judge process died"
        for fd in (tests_fd, result_fd):
            os.close(fd)
        rpc_judge.close()
        if init_pid:
            # pid 1 of the namespace: the kernel kills everything else in it. Its exit finishes in the
            # background (SIGCHLD reaps it); this half of the cgroup is vacated before its next use.
            kill_pidfd(init_pidfd)
        if init_pid and not done:  # the judge may be mid-test: replace it
            self.stop_judge()
            self.start_judge()
        return {"job": job["job"], "timed_out": bool(init_pid) and not done and not start_error,
                "start_error": start_error, "wall_s": time.monotonic() - started}


def fork_with_pidfd() -> tuple[int, int]:
    """fork(), and in the parent a pidfd of the child taken before SIGCHLD can reap it (no pid reuse race)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    pid = -1
    try:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            return 0, -1
        return pid, os.pidfd_open(pid)
    finally:
        if pid:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def kill_pidfd(pidfd: int) -> None:
    """SIGKILL the process behind `pidfd` (a no-op if it is gone) and close the pidfd."""
    if pidfd >= 0:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)


def _wait_readable(sock: socket.socket, deadline: float) -> bool:
    left = deadline - time.monotonic()
    return left > 0 and bool(select.select([sock], [], [], left)[0])


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def vacate(cgroup_procs: list[str], timeout_s: float = 5.0) -> None:
    """Make sure the cgroup is empty before a job uses it: SIGKILL and reap anything still there."""
    if not cgroup_procs:
        return
    give_up = time.monotonic() + timeout_s
    while True:
        reap()
        with open(cgroup_procs[0]) as f:
            pids = [int(p) for p in f.read().split()]
        if not pids:
            return
        if time.monotonic() > give_up:
            raise RuntimeError(f"cgroup {cgroup_procs[0]} still has processes {pids} after SIGKILL for "
                               f"{timeout_s} s")
        for pid in pids:
            _kill(pid)
        time.sleep(0.0005)


def reap() -> None:
    """Collect every exited child (ours, and orphans adopted as a subreaper) without blocking."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def main() -> None:
    cfg = json.loads(sys.argv[1])
    sock = socket.socket(fileno=cfg["sock_fd"])
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        if "namespaces" in cfg["features"]:
            build_root(cfg["root"], cfg["stdlib"])
        for name in WARM:
            __import__(name)
        gc.collect()
        gc.freeze()  # the warm objects stay out of the children's collections: fewer copy-on-write faults
    except BaseException as exc:  # noqa: BLE001 - tell the caller exactly what failed
        sock.send(json.dumps({"fatal": f"{type(exc).__name__}: {exc}"}).encode())
        sys.exit(1)
    worker = Worker(cfg, sock)
    signal.signal(signal.SIGCHLD, lambda *_: reap())  # killed namespaces finish dying in the background
    sock.send(json.dumps({"ready": os.getpid()}).encode())
    while True:
        data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 3)
        if not data:
            return
        job = json.loads(data)
        if len(fds) != 3:
            raise SystemExit(f"job {job.get('job')} came with {len(fds)} fds, expected 3")
        sock.send(json.dumps(worker.run_job(job, *fds)).encode())


if __name__ == "__main__":
    main()
