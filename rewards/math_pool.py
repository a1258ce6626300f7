"""A pool of worker processes that runs a function per item under a hard wall-clock bound.

    pool = KillPool("answerkey.rewards.math_check:check", workers=2)
    pool.map([(response, gold, True), ...], timeout_s=5.0)   # -> [("ok", Score) | ("timeout", "") | ("error", msg)]

Each item gets at most `timeout_s` of a worker's time, counted from when it is handed to a ready
worker (start-up and queueing do not count). A worker that overruns is killed (SIGKILL from the
parent) and replaced; one that dies is replaced and its item reported as an error. Nothing here
installs a signal handler or uses `signal.alarm`, so `map` works from any thread, an asyncio
executor or a Ray actor, and never disturbs the caller's own timeouts. Workers start with the
fresh interpreter (`python -c`, spawn semantics), never a fork of the caller: forking a process
that holds threads or a CUDA context is unsafe, and unlike multiprocessing's spawn/forkserver a
plain subprocess never re-imports the caller's `__main__` (a script without the `__main__` guard, a
Ray worker). A replacement after a kill costs one interpreter start plus the checker's imports
(~1-2 s of CPU, off the killed item's clock). Concurrent `map` calls share the workers: each call
borrows idle ones and returns them.
"""

from __future__ import annotations

import atexit
import importlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

MEMORY_LIMIT_BYTES = 3 * 1024**3  # per worker address space: a runaway sympy call raises MemoryError
STARTUP_S = 120.0  # a worker not ready by then (broken install, import error) fails its items loudly


def _worker_main(fd: int, target: str, init: str | None = None) -> None:
    """Worker loop: import `module:function`, say ready, then answer (task_id, args) requests forever."""
    conn = Connection(fd)
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > MEMORY_LIMIT_BYTES:
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, hard))
    except (ImportError, ValueError, OSError):
        pass  # no limit on this platform: the wall-clock kill still bounds the item
    module, name = target.split(":")
    fn = getattr(importlib.import_module(module), name)
    if init:  # e.g. warm the parser's caches, off every item's clock
        init_module, init_name = init.split(":")
        getattr(importlib.import_module(init_module), init_name)()
    conn.send(("ready", None, None))
    while True:
        try:
            task_id, args = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        try:
            conn.send((task_id, "ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - report every failure as this item's error
            conn.send((task_id, "error", f"{type(exc).__name__}: {exc}"[:300]))


class _Worker:
    """A fresh interpreter (`python -c`), talking over a socketpair; never a fork of the caller."""

    def __init__(self, target: str, init: str | None):
        parent, child = socket.socketpair()
        code = (f"from answerkey.rewards.math_pool import _worker_main; "
                f"_worker_main({child.fileno()}, {target!r}, {init!r})")
        # The child sees the caller's import path (a package found through a runtime sys.path entry too).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen([sys.executable, "-c", code], pass_fds=[child.fileno()],
                                        stdin=subprocess.DEVNULL, close_fds=True, env=env)
        child.close()
        self.conn = Connection(parent.detach())
        self.ready = False
        self.started = time.monotonic()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        self.conn.close()


class KillPool:
    """Up to `workers` processes running `target` ("module:function"); see module docstring."""

    def __init__(self, target: str, workers: int = 2, init: str | None = None):
        if workers < 1:
            raise ValueError(f"KillPool needs at least one worker, got {workers}")
        self.target = target
        self.init = init  # "module:function" each worker calls once before it says ready
        self.size = workers
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._started = 0
        self._closed = False
        self._live: set[_Worker] = set()  # every worker not yet killed, borrowed or idle (for close)
        self._early_deaths = 0  # workers that died before saying ready (a broken install)
        self.kills = 0  # workers killed for overrunning (for metrics and tests)
        atexit.register(self.close)

    def _borrow(self, wanted: int) -> list[_Worker]:
        """At least one worker (waits for one if all are busy), at most `wanted`."""
        borrowed: list[_Worker] = []
        with self._lock:
            if self._closed:
                raise RuntimeError("KillPool is closed")
            to_start = min(self.size - self._started, wanted)
            self._started += to_start
        borrowed += [self._new_worker() for _ in range(to_start)]
        while len(borrowed) < wanted:
            try:
                borrowed.append(self._idle.get(block=not borrowed))
            except queue.Empty:
                break
        return borrowed

    def _new_worker(self) -> _Worker:
        worker = _Worker(self.target, self.init)
        with self._lock:
            self._live.add(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        with self._lock:
            self._live.discard(worker)
        return self._new_worker()

    def map(self, items: Sequence[tuple], timeout_s: float) -> list[tuple[str, Any]]:
        """Run `target(*item)` for each item; ("ok", result), ("timeout", "") or ("error", message) each."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        results: list[tuple[str, Any] | None] = [None] * len(items)
        if not items:
            return []
        workers = self._borrow(len(items))
        try:
            self._run(workers, items, results, timeout_s)
        finally:
            for worker in workers:
                self._idle.put(worker)
        return results  # type: ignore[return-value]

    def _run(self, workers: list[_Worker], items: Sequence[tuple], results: list, timeout_s: float) -> None:
        pending = list(range(len(items)))[::-1]  # pop() from the end hands out items in order
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item index, deadline)
        while pending or busy:
            if self._closed:  # closed under us (interpreter exit): fail what is left, loudly
                for index in pending + [index for index, _ in busy.values()]:
                    results[index] = ("error", "KillPool was closed while the item was pending")
                return
            for slot, worker in enumerate(workers):
                if worker.ready and slot not in busy and pending:
                    index = pending.pop()
                    worker.conn.send((index, items[index]))
                    busy[slot] = (index, time.monotonic() + timeout_s)
            deadlines = [deadline for _, deadline in busy.values()]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 1.0
            for conn in wait([w.conn for w in workers], timeout=wait_s):
                slot = next(k for k, w in enumerate(workers) if w.conn is conn)
                self._receive(workers, slot, busy, results)
            now = time.monotonic()
            starting = pending and not busy and not any(w.ready for w in workers)
            if starting and (self._early_deaths > 3 or all(now - w.started > STARTUP_S for w in workers)):
                for index in pending:
                    results[index] = ("error", f"no worker for {self.target} started within {STARTUP_S:.0f} s")
                return
            for slot, (index, deadline) in list(busy.items()):
                if now >= deadline:
                    results[index] = ("timeout", "")
                    del busy[slot]
                    self.kills += 1
                    workers[slot] = self._replace(workers[slot])

    def _receive(self, workers: list[_Worker], slot: int, busy: dict, results: list) -> None:
        worker = workers[slot]
        try:
            task_id, status, value = worker.conn.recv()
        except (EOFError, OSError):  # the worker died (crash, out of memory kill)
            self._early_deaths += not worker.ready
            if slot in busy:
                index, _ = busy.pop(slot)
                results[index] = ("error", f"worker process died (exit code {worker.process.poll()})")
            workers[slot] = self._replace(worker)
            return
        if task_id == "ready":
            worker.ready = True
            return
        index, _ = busy.pop(slot)
        results[index] = (status, value)

    def close(self) -> None:
        """Kill every worker, idle or borrowed (a `map` still running then reports its items as errors)."""
        with self._lock:
            self._closed = True
            live, self._live = list(self._live), set()
        for worker in live:
            worker.kill()
