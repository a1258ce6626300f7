"""One slot of the sandbox pool: a warm interpreter that forks an isolated child per execution.

Started by `sandbox.Sandbox` as `python -I -S sandbox_worker.py CONFIG_JSON` with an empty
environment and one Unix socket (fd given in the config). It never reads a job's program or tests
itself: each job arrives as a small header plus two memfds (program, tests), so the memory that the
candidate's process inherits by `fork` holds no test, no expected value and no nonce.

Per job:
  candidate  fork -> join the slot's cgroups -> unshare(pid, net, mount, ipc, uts) -> fork again:
             the grandchild is pid 1 of a fresh pid namespace, with only a down `lo` for a network;
             it mounts a private tmpfs on /tmp of a read-only root made once per worker (/usr, the
             stdlib, /dev/null...; no /etc, /home, /root, /proc), chroots into it, sets rlimits
             (CPU, file size, open files, core, nproc), points stdin/stdout/stderr at /dev/null, drops to
             the slot's own unprivileged uid with no capabilities and no_new_privs, then runs the program
             and serves calls of the entry point (`sandbox_judge.serve_candidate`).
  judge      fork -> drop to the judge uid -> read the tests and the nonce from the tests memfd ->
             run them against the candidate over a socketpair -> write the result, tagged with
             the nonce, to a pipe this worker relays to the caller.
The worker waits for the judge's result or the wall-clock deadline, then SIGKILLs the namespace's
pid 1 (the kernel kills everything in the namespace, daemons included) and the judge, kills
whatever is still in the cgroup, and reaps every child (it is a child subreaper).

Isolation features may be switched off only by the caller's explicit weaker mode (`features` in
the config); this file does what it is told and reports failures as `{"fatal": ...}`.
Stdlib only.
"""

from __future__ import annotations

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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contextlib

from sandbox_judge import run_judge, serve_candidate  # noqa: E402

# Modules a typical program imports, loaded once here so every fork starts warm.
WARM = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "typing",
        "random", "statistics", "fractions", "decimal", "hashlib", "copy", "operator", "datetime",
        "json", "ast", "dataclasses", "enum", "textwrap", "unicodedata", "array", "struct", "numbers")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 4, 36, 38
_libc = ctypes.CDLL(None, use_errno=True)


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
            mount("tmpfs", root + path + "/site-packages", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
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


def namespace_child(cfg: dict, job: dict, fds: dict[str, int], rpc_judge: socket.socket,
                    rpc_candidate: socket.socket) -> None:
    """Enter new namespaces, fork pid 1 of the new pid namespace (the candidate), then be the judge."""
    try:
        close_fds_except({*fds.values(), rpc_judge.fileno(), rpc_candidate.fileno()})
        if "namespaces" in cfg["features"]:
            unshare(CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)
        pid = os.fork()
        if pid == 0:
            for name in ("tests", "report", "result"):
                os.close(fds[name])
            rpc_judge.close()
            sandboxed_child(cfg, job, fds["program"], rpc_candidate)
        os.close(fds["program"])
        rpc_candidate.close()
        os.write(fds["report"], f"P{pid}".encode())
        os.close(fds["report"])
        judge(cfg, fds["tests"], rpc_judge, fds["result"])
    except BaseException as exc:  # noqa: BLE001 - reported to the worker as a start failure
        with contextlib.suppress(OSError):
            os.write(fds["report"], f"E{type(exc).__name__}: {exc}"[:500].encode())
    finally:
        os._exit(0)


def sandboxed_child(cfg: dict, job: dict, program_fd: int, rpc: socket.socket) -> None:
    """pid 1 of the namespace: lock itself in, drop privileges, run the program (never returns)."""
    try:
        os.setsid()
        for procs in cfg["cgroup_procs"]:
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
            os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.environ.clear()
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    except BaseException as exc:  # noqa: BLE001 - the judge reports it as an infrastructure error
        try:
            rpc.sendall(json.dumps({"load": "infra", "error": f"sandbox set-up: {type(exc).__name__}: {exc}"}).encode())
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
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"] * 4, limits["processes"] * 4))
    if "cgroup_memory" not in features:  # without a cgroup, bound each process at least
        resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))


def judge(cfg: dict, tests_fd: int, rpc: socket.socket, result_w: int) -> None:
    """Run the tests against the candidate; write the nonce-tagged result to `result_w`.

    Only now, after the candidate was forked, are the tests read: its memory never held them."""
    payload = json.loads(read_fd(tests_fd))
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if "uid_drop" in cfg["features"]:
        os.setgroups([])
        os.setresgid(cfg["judge_uid"], cfg["judge_uid"], cfg["judge_uid"])
        os.setresuid(cfg["judge_uid"], cfg["judge_uid"], cfg["judge_uid"])
    prctl(PR_SET_DUMPABLE, 0)
    try:
        result = run_judge(payload["tests"], payload["prelude"], payload["entry_point"], rpc)
    except Exception as exc:  # noqa: BLE001 - the tests themselves failed: not the candidate's fault
        result = {"load": "judge_error", "error": f"{type(exc).__name__}: {exc}"[:500]}
    result["nonce"] = payload["nonce"]
    view = memoryview(json.dumps(result).encode())
    while view:
        view = view[os.write(result_w, view):]


def run_job(cfg: dict, job: dict, program_fd: int, tests_fd: int) -> dict:
    """Fork the namespace child (judge + candidate), wait for the result or the deadline, kill, reap."""
    started = time.monotonic()
    deadline = started + float(job["timeout_s"])
    rpc_judge, rpc_candidate = socket.socketpair()
    report_r, report_w = os.pipe()
    result_r, result_w = os.pipe()
    fds = {"program": program_fd, "tests": tests_fd, "report": report_w, "result": result_w}
    child = os.fork()
    if child == 0:
        namespace_child(cfg, job, fds, rpc_judge, rpc_candidate)
    for fd in fds.values():
        os.close(fd)
    rpc_judge.close()
    rpc_candidate.close()
    report, _ = _read_until(report_r, deadline, 600)
    init_pid = int(report[1:]) if report.startswith(b"P") else 0
    result, complete = _read_until(result_r, deadline, 1 << 20) if init_pid else (b"", True)
    for pid in (init_pid, child):
        if pid:
            _kill(pid)
    for pid in (child, init_pid):  # the child first: once it is gone, pid 1 is ours (we are subreaper)
        if pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)  # SIGKILLed: returns promptly
    leftovers = empty_cgroup(cfg)
    reap()
    os.close(report_r)
    os.close(result_r)
    return {"job": job["job"], "timed_out": not complete, "judge": result.decode("utf-8", "replace"),
            "start_error": "" if init_pid else report[1:].decode("utf-8", "replace") or "no report",
            "leftovers": leftovers, "wall_s": time.monotonic() - started}


def _read_until(fd: int, deadline: float, limit: int) -> tuple[bytes, bool]:
    """(everything written to `fd` until EOF, the deadline or `limit` bytes; whether EOF was reached)."""
    chunks, got = [], 0
    while got < limit:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b"".join(chunks), False
        chunk = os.read(fd, limit - got)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks), False


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def empty_cgroup(cfg: dict) -> int:
    """SIGKILL whatever is left in the slot's cgroup until it is empty; how many had to be killed."""
    if not cfg["cgroup_procs"]:
        return 0
    killed, give_up = 0, time.monotonic() + 5.0
    while time.monotonic() < give_up:
        with open(cfg["cgroup_procs"][0]) as f:
            pids = [int(p) for p in f.read().split()]
        if not pids:
            return killed
        for pid in pids:
            _kill(pid)
            killed += 1
        time.sleep(0.001)
        reap()
    raise RuntimeError(f"cgroup {cfg['cgroup_procs'][0]} still has processes after SIGKILL for 5 s")


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
    sock.send(json.dumps({"ready": os.getpid()}).encode())
    while True:
        data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)
        if not data:
            return
        job = json.loads(data)
        if len(fds) != 2:
            raise SystemExit(f"job {job.get('job')} came with {len(fds)} fds, expected 2")
        sock.send(json.dumps(run_job(cfg, job, fds[0], fds[1])).encode())


if __name__ == "__main__":
    main()
