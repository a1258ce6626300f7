"""The sandbox's self-check: a probe program run through the real execution path, asserting each property.

`PROBE_PROGRAM` defines `probe()`, which reports what it sees from inside (its pid, uid, network
interfaces, the filesystem, rlimits, environment) and tries a small fork bomb and a memory bomb.
`probe_tests(features, limits)` are the judge-side asserts, one per isolation property that the
enabled `features` promise, each with a message naming what is missing; `Sandbox()` runs them on
every worker before it accepts a job and raises `SandboxUnavailable` with the failed messages.
"""

from __future__ import annotations

PROBE_PROGRAM = r'''
import os, resource, signal, socket, time

def _no_new_privs():
    try:
        import ctypes
        return ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS
    except Exception as exc:
        return repr(exc)

def _try(fn):
    try:
        fn()
        return True
    except OSError:
        return False

def _write(path):
    with open(path, "w") as f:
        f.write("x")

def _connect():
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", 9))
        return "connected"
    except OSError as exc:
        return exc.__class__.__name__
    finally:
        s.close()

def _fork_bomb(limit):
    children = []
    for _ in range(limit + 16):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return len(children)

def _memory_bomb(nbytes):
    pid = os.fork()
    if pid == 0:
        try:
            block = b"x" * nbytes
            os._exit(0 if len(block) else 1)
        except MemoryError:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "killed by signal %d" % os.WTERMSIG(status)
    return {0: "allocated", 3: "MemoryError"}.get(os.WEXITSTATUS(status), "exit %d" % os.WEXITSTATUS(status))

def probe(processes, memory_bytes):
    return {
        "pid": os.getpid(), "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
        "groups": os.getgroups(), "setuid0": _try(lambda: os.setuid(0)), "no_new_privs": _no_new_privs(),
        "netifs": [name for _, name in socket.if_nameindex()], "connect": _connect(),
        "root": sorted(os.listdir("/")), "shadow": os.path.exists("/etc/shadow"),
        "write_root": _try(lambda: _write("/probe")), "write_tmp": _try(lambda: _write("probe")),
        "cwd": os.getcwd(), "env": dict(os.environ), "hostname": socket.gethostname(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[1],
        "cpu": resource.getrlimit(resource.RLIMIT_CPU)[1],
        "core": resource.getrlimit(resource.RLIMIT_CORE)[1],
        "forks": _fork_bomb(processes), "memory": _memory_bomb(memory_bytes + (64 << 20)),
    }
'''

_COMMON = '''
    assert info["env"] == {}, "environment: the program inherited variables %%r" %% sorted(info["env"])
    assert info["nofile"] == %(open_files)d, "rlimit: RLIMIT_NOFILE is %%r" %% info["nofile"]
    assert info["fsize"] == %(file_bytes)d, "rlimit: RLIMIT_FSIZE is %%r" %% info["fsize"]
    assert info["cpu"] > 0 and info["core"] == 0, "rlimit: RLIMIT_CPU/RLIMIT_CORE not set"
    assert info["no_new_privs"] == 1, "no_new_privs: not set (%%r)" %% (info["no_new_privs"],)
'''
_NAMESPACES = '''
    assert info["pid"] == 1, (
        "pid namespace: the program is pid %r, not pid 1 of its own namespace" % info["pid"])
    assert info["netifs"] == ["lo"], "network namespace: interfaces %r visible" % info["netifs"]
    assert info["connect"] != "connected", "network namespace: connected to 127.0.0.1"
    assert info["hostname"] == "sandbox", "uts namespace: hostname is %r" % info["hostname"]
    assert not info["shadow"] and "etc" not in info["root"] and "home" not in info["root"], (
        "mount namespace: / shows %r" % info["root"])
    assert not info["write_root"], "mount namespace: / is writable"
    assert info["write_tmp"] and info["cwd"] == "/tmp", (
        "mount namespace: no private writable /tmp (cwd %r)" % info["cwd"])
'''
_UID = '''
    assert info["uid"] != 0 and info["euid"] != 0 and info["gid"] != 0, (
        "uid drop: running as uid %r" % info["uid"])
    assert info["groups"] == [], "uid drop: supplementary groups %r kept" % info["groups"]
    assert not info["setuid0"], "uid drop: setuid(0) succeeded"
'''
_PIDS = '''
    assert info["forks"] < %(processes)d, (
        "cgroup pids: %%d forks succeeded (limit %(processes)d)" %% info["forks"])
'''
_MEMORY = '''
    assert info["memory"] == "killed by signal 9", (
        "cgroup memory: a bomb over the limit was %s" % info["memory"])
'''


def probe_tests(features: list[str], limits) -> str:
    """`check(candidate)` asserting every property the enabled `features` promise."""
    values = {"open_files": limits.open_files, "file_bytes": limits.file_bytes, "processes": limits.processes}
    body = _COMMON % values
    body += _NAMESPACES if "namespaces" in features else ""
    body += _UID if "uid_drop" in features else ""
    body += _PIDS % values if "cgroup_pids" in features else ""
    body += _MEMORY if "cgroup_memory" in features else ""
    call = f"    info = candidate({limits.processes}, {limits.memory_bytes})\n"
    return "def check(candidate):\n" + call + body
