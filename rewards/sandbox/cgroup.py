"""Per-slot cgroups for the sandbox: a pids limit and a memory limit that bound a whole process tree.

    groups = SlotCgroups.create(slots=4, pids=64, memory_bytes=512 << 20)  # CgroupError names what failed
    groups.procs_files(0)      # per half: the cgroup.procs files a slot-0 child writes itself into
    groups.kill_all(0); groups.remove()

RLIMIT_NPROC does not bind root and RLIMIT_AS bounds one process, not the sum over a fork tree; a
cgroup bounds both. Works with cgroup v1 (separate `pids` and `memory` hierarchies) and v2 (one
unified hierarchy, when the `pids` and `memory` controllers can be enabled below our own cgroup).
Each sandbox owns `answerkey-sandbox-<pid>` below the caller's own cgroup; leftovers of dead
callers are removed when found empty. v1 has no `cgroup.kill`: `kill_all` loops over
`cgroup.procs` with SIGKILL until it is empty.

Each slot has two halves (`slot0a`, `slot0b`) with the same limits, used by alternate jobs: a
killed namespace takes milliseconds to finish dying (the kernel waits for an RCU grace period when
it drops the mount namespace), and the next job need not wait for it in the same cgroup.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("pids", "memory")


class CgroupError(RuntimeError):
    """The per-execution cgroup limits cannot be set up here; the message says which and why."""


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(hierarchy root, mount point, fs type, super options) of every cgroup mount."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, superopts = fields[sep + 1], set(fields[sep + 3].split(","))
        if fstype in ("cgroup", "cgroup2"):
            out.append((fields[3], fields[4], fstype, superopts))
    return out


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _join(mount_point: str, mount_root: str, own: str) -> Path:
    rel = own[len(mount_root):] if own.startswith(mount_root) else own
    return Path(mount_point) / rel.lstrip("/")


def locate() -> dict[str, Path]:
    """controller -> the directory of our own cgroup in its hierarchy (v1 preferred, else v2)."""
    own, found, v2 = _own_paths(), {}, None
    for root, point, fstype, opts in _mounts():
        if fstype == "cgroup":
            for name in CONTROLLERS:
                if name in opts and name in own:
                    found[name] = _join(point, root, own[name])
        elif "" in own:
            v2 = _join(point, root, own[""])
    for name in CONTROLLERS:
        if name not in found and v2 is not None:
            controllers = (v2 / "cgroup.controllers")
            if controllers.exists() and name in controllers.read_text().split():
                found[name] = v2
    missing = [n for n in CONTROLLERS if n not in found]
    if missing:
        raise CgroupError(f"no cgroup hierarchy with the {'/'.join(missing)} controller is mounted for this "
                          f"process (looked at /proc/self/mountinfo and /proc/self/cgroup)")
    return found


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


@dataclass
class SlotCgroups:
    bases: dict[str, Path]  # controller -> answerkey-sandbox-<pid> directory
    slots: int

    @classmethod
    def create(cls, slots: int, pids: int, memory_bytes: int) -> SlotCgroups:
        parents = locate()
        for parent in set(parents.values()):
            _remove_stale(parent)
        bases = {name: parent / f"answerkey-sandbox-{os.getpid()}" for name, parent in parents.items()}
        groups = cls(bases, slots)
        try:
            for name, base in bases.items():
                if base.exists():
                    continue
                try:
                    base.mkdir()
                except OSError as exc:
                    raise CgroupError(f"cannot create the {name} cgroup {base}: {exc.strerror}") from None
                if (base / "cgroup.subtree_control").exists():  # v2: children get the controllers
                    _write(parents[name] / "cgroup.subtree_control", "+pids +memory")
                    _write(base / "cgroup.subtree_control", "+pids +memory")
            for slot in range(slots):
                groups._make_slot(slot, pids, memory_bytes)
        except CgroupError:
            groups.remove()
            raise
        return groups

    def _dirs(self, slot: int, name: str) -> list[Path]:
        return [self.bases[name] / f"slot{slot}{half}" for half in "ab"]

    def _make_slot(self, slot: int, pids: int, memory_bytes: int) -> None:
        for name in self.bases:
            for d in self._dirs(slot, name):
                self._limit(name, d, pids, memory_bytes)

    @staticmethod
    def _limit(name: str, d: Path, pids: int, memory_bytes: int) -> None:
        d.mkdir(exist_ok=True)
        if name == "pids":
            _write(d / "pids.max", str(pids))
            if (d / "pids.max").read_text().strip() != str(pids):
                got = (d / "pids.max").read_text().strip()
                raise CgroupError(f"{d}/pids.max reads back {got}, wrote {pids}")
        elif (d / "memory.limit_in_bytes").exists():  # v1
            _write(d / "memory.limit_in_bytes", str(memory_bytes))
            if (d / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
                _write(d / "memory.memsw.limit_in_bytes", str(memory_bytes))
            if int((d / "memory.limit_in_bytes").read_text()) > memory_bytes:
                raise CgroupError(f"{d}/memory.limit_in_bytes did not take {memory_bytes}")
        else:  # v2
            _write(d / "memory.max", str(memory_bytes))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")

    def procs_files(self, slot: int) -> list[list[str]]:
        """For each half of the slot, its distinct cgroup.procs files, pids first (the worker polls it)."""
        halves = []
        for half in range(2):
            files = []
            for name in CONTROLLERS:
                f = str(self._dirs(slot, name)[half] / "cgroup.procs")
                if f not in files:
                    files.append(f)
            halves.append(files)
        return halves

    def pids_in(self, slot: int) -> list[int]:
        """Every process in the slot (both halves)."""
        pids = []
        for files in self.procs_files(slot):
            with contextlib.suppress(FileNotFoundError):
                pids += [int(p) for p in Path(files[0]).read_text().split()]
        return pids

    def kill_all(self, slot: int, timeout_s: float = 5.0) -> None:
        """SIGKILL every process in the slot until the cgroup is empty."""
        give_up = time.monotonic() + timeout_s
        while (pids := self.pids_in(slot)) and time.monotonic() < give_up:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        if self.pids_in(slot):
            raise CgroupError(f"slot {slot}: processes {self.pids_in(slot)} survive SIGKILL")

    def remove(self) -> None:
        for slot in range(self.slots):
            with contextlib.suppress(CgroupError):
                self.kill_all(slot, timeout_s=2.0)
        for base in self.bases.values():
            _rmtree_cgroup(base)


def _rmtree_cgroup(base: Path) -> None:
    if not base.exists():
        return
    for child in base.iterdir():
        if child.is_dir():
            with contextlib.suppress(OSError):
                child.rmdir()
    with contextlib.suppress(OSError):
        base.rmdir()


def _remove_stale(parent: Path) -> None:
    """Remove `answerkey-sandbox-<pid>` groups whose owner is gone (only empty ones can be removed)."""
    for d in parent.glob("answerkey-sandbox-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _rmtree_cgroup(d)
