"""A pool of fresh worker processes that run a function per item, each item under a SIGKILL deadline.

    pool = DeadlinePool("math:sqrt", workers=2)  # target "module:function"
    pool.map([(4.0,), (-1.0,)], timeout_s=5.0)   # [("ok", 2.0), ("error", "ValueError: math domain error")]
    pool.close()                                 # every worker process is gone (also run at interpreter exit)

Two owners, one mechanism. The math checker (`rewards/math/`) keeps a pool of its own for the sympy
calls, one item per bound; the driver's `RewardWorkers` (`answerkey/reward_workers.py`) runs the
env's reward code in one as the whole-batch backstop (its `init` builds the env inside each worker).
What they share:

- spawn: each worker is a fresh interpreter (`python -c`) on a socketpair, never a fork of the caller
  (forking a process that holds threads or a CUDA context is unsafe) and never multiprocessing's
  spawn/forkserver, which re-import the caller's `__main__` (a script without the guard, a Ray
  worker). It sees the caller's `sys.path`. A replacement costs one interpreter start plus the
  target's imports and `init`, off every item's clock.
- wire: the parent sends `(target, init, init_args, memory_limit_bytes)`; the worker answers
  `("ready", "ok", what init returned)` or `("ready", "error", why)`; then each `(task_id, args)` gets
  `(task_id, "ok", target(*args))` or `(task_id, "error", "Type: message")`; `None` asks it to exit.
- kill at the deadline: an item gets at most its `timeout_s` of a worker's time, counted from when it
  is handed to a ready worker (start-up and queueing do not count). A worker that overruns is
  SIGKILLed from the parent and replaced (`("timeout", "")`); one that dies mid-item (segfault, OOM
  kill, `os._exit`) is replaced and its item is `("error", "worker process died (exit code N)")`.
- memory: each worker lowers its soft RLIMIT_AS to `memory_limit_bytes` (None: no limit), so a
  runaway allocation raises MemoryError in that item instead of taking the machine down.
- close: idle workers are asked to exit (so their own children, e.g. a sandbox, are shut down) and
  given `CLOSE_GRACE_S`; every worker still alive then is killed; every one is reaped.

Nothing here installs a signal handler or uses `signal.alarm`, so `map` works from any thread, an
asyncio executor or a Ray actor and never disturbs the caller's own timeouts. Concurrent `map` calls
share the workers: each borrows idle ones and returns them. No Ray and no torch in here.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

MEMORY_LIMIT_BYTES = 3 * 1024**3  # default per-worker address space: a runaway sympy call raises MemoryError
STARTUP_S = 120.0  # a worker not ready by then (broken install, slow env build) fails loudly
CLOSE_GRACE_S = 5.0  # how long close() waits for idle workers to exit on request before killing them
_EARLY_DEATHS = 3  # workers that may fail to start before a map gives up on its pending items
_POOLS: weakref.WeakSet[DeadlinePool] = weakref.WeakSet()  # closed at interpreter exit


def _resolve(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _describe(exc: BaseException, limit: int = 300) -> str:
    return f"{type(exc).__name__}: {exc}"[:limit]


def _limit_memory(limit: int | None) -> None:
    if not limit:
        return
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass  # no limit on this platform: the wall-clock kill still bounds the item


def _serve(fd: int) -> None:
    """Worker process: set up (memory limit, import the target, run init), then answer items until told
    to stop."""
    conn = Connection(fd)
    try:
        target, init, init_args, memory_limit = conn.recv()
        _limit_memory(memory_limit)
        fn = _resolve(target)
        info = _resolve(init)(*init_args) if init else None
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails loudly with it
        with contextlib.suppress(OSError):
            conn.send(("ready", "error", _describe(exc, 2000)))
        return
    conn.send(("ready", "ok", info))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if job is None:
            return
        task_id, args = job
        try:
            reply = (task_id, "ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - every failure is this item's error
            reply = (task_id, "error", _describe(exc))
        try:
            conn.send(reply)
        except OSError:
            return
        except Exception as exc:  # noqa: BLE001 - the result does not pickle: still this item's error
            conn.send((task_id, "error", f"result could not be sent back: {_describe(exc)}"))


class _Worker:
    """One worker process (see the module docstring's spawn and wire)."""

    def __init__(self, setup: tuple):
        parent, child = socket.socketpair()
        code = "import sys; from answerkey.rewards.deadline_pool import _serve; _serve(int(sys.argv[1]))"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen([sys.executable, "-c", code, str(child.fileno())],
                                        pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=env)
        child.close()
        self.conn = Connection(parent.detach())
        self.conn.send(setup)
        self.ready = False
        self.started = time.monotonic()

    def exit_code(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=1)
        return None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.conn.close()


class DeadlinePool:
    """Up to `workers` processes running `target` ("module:function"); see the module docstring.

    `init` ("module:function") runs once in each worker with `init_args` before it reports ready;
    what it returns is kept as `info` (e.g. a property of the env it built). `kills` counts workers
    killed at a deadline, `restarts` every worker replaced after a kill or a death mid-item.
    """

    def __init__(self, target: str, workers: int = 2, init: str | None = None, init_args: Sequence[Any] = (),
                 memory_limit_bytes: int | None = MEMORY_LIMIT_BYTES):
        if workers < 1:
            raise ValueError(f"DeadlinePool needs at least one worker, got {workers}")
        self.target, self.size = target, workers
        self._setup = (target, init, tuple(init_args), memory_limit_bytes)
        self.info: Any = None
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._started = 0
        self._closed = False
        self._live: set[_Worker] = set()  # every worker not yet killed, borrowed or idle (for close)
        self._early_deaths = 0  # workers that failed before saying ready (a broken install or init)
        self._start_error = ""  # the last such failure, for the items' error
        self.kills = 0
        self.restarts = 0
        _POOLS.add(self)

    def start(self) -> Any:
        """Start every worker now and wait until each is ready; returns `info`. Call before the first `map`.

        Raises RuntimeError naming the target and why (init raised, the process died, STARTUP_S passed),
        after closing the pool.
        """
        workers = self._borrow(self.size)
        try:
            deadline = time.monotonic() + STARTUP_S
            for worker in workers:
                if not worker.ready:
                    self._await_ready(worker, deadline)
        except BaseException:
            self.close()
            raise
        for worker in workers:
            self._idle.put(worker)
        return self.info

    def _await_ready(self, worker: _Worker, deadline: float) -> None:
        if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"no worker for {self.target} started within {STARTUP_S:.0f} s")
        try:
            _, status, value = worker.conn.recv()
        except (EOFError, OSError):
            status, value = "error", f"the process exited with code {worker.exit_code()}"
        if status != "ok":
            raise RuntimeError(f"worker for {self.target} could not start: {value}")
        worker.ready = True
        self.info = value

    def pids(self) -> list[int]:
        """Process ids of the workers alive now (for tests and diagnostics)."""
        with self._lock:
            return [w.process.pid for w in self._live if w.process.poll() is None]

    def _borrow(self, wanted: int) -> list[_Worker]:
        """At least one worker (waits for one if all are busy), at most `wanted`."""
        borrowed: list[_Worker] = []
        with self._lock:
            if self._closed:
                raise RuntimeError("DeadlinePool is closed")
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
        worker = _Worker(self._setup)
        with self._lock:
            closed = self._closed
            if not closed:
                self._live.add(worker)
        if closed:  # close() ran while it started: it must not outlive the pool
            worker.kill()
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        """Kill `worker` and start its successor (none once the pool is closed: the dead one stays in its
        slot)."""
        worker.kill()
        with self._lock:
            self._live.discard(worker)
            if self._closed:
                return worker
        return self._new_worker()

    def map(self, items: Sequence[tuple], timeout_s: float | Sequence[float]) -> list[tuple[str, Any]]:
        """Run `target(*item)` for each item: ("ok", result), ("timeout", "") or ("error", message), in order.

        `timeout_s` is one bound for every item, or one per item.
        """
        bounds = [timeout_s] * len(items) if isinstance(timeout_s, int | float) else list(timeout_s)
        if len(bounds) != len(items) or not all(b > 0 for b in bounds):
            raise ValueError(f"timeout_s must be > 0, one value or one per item ({len(items)}), "
                             f"got {timeout_s}")
        if not items:
            return []
        results: list[tuple[str, Any] | None] = [None] * len(items)
        workers = self._borrow(len(items))
        try:
            self._run(workers, items, bounds, results)
        finally:
            for worker in workers:
                self._idle.put(worker)
        return results  # type: ignore[return-value]

    def _run(self, workers: list[_Worker], items: Sequence[tuple], bounds: list[float],
             results: list) -> None:
        pending = list(range(len(items)))[::-1]  # pop() from the end hands out items in order
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item index, deadline)
        while pending or busy:
            if self._closed:  # closed under us (interpreter exit): fail what is left, loudly
                for index in pending + [index for index, _ in busy.values()]:
                    results[index] = ("error", "DeadlinePool was closed while the item was pending")
                return
            try:
                self._step(workers, items, bounds, results, pending, busy)
            except OSError:  # close() in another thread closed a connection: the next check fails the rest
                if not self._closed:
                    raise

    def _step(self, workers: list[_Worker], items: Sequence[tuple], bounds: list[float], results: list,
              pending: list[int], busy: dict[int, tuple[int, float]]) -> None:
        """Hand items to ready workers, take in replies, kill overruns; fail everything if no worker can
        start."""
        for slot, worker in enumerate(workers):
            if worker.ready and slot not in busy and pending:
                index = pending.pop()
                worker.conn.send((index, items[index]))
                busy[slot] = (index, time.monotonic() + bounds[index])
        deadlines = [deadline for _, deadline in busy.values()]
        wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 1.0
        for conn in wait([w.conn for w in workers], timeout=wait_s):
            slot = next(k for k, w in enumerate(workers) if w.conn is conn)
            self._receive(workers, slot, busy, results)
        now = time.monotonic()
        starting = pending and not busy and not any(w.ready for w in workers)
        gave_up = self._early_deaths > _EARLY_DEATHS or all(now - w.started > STARTUP_S for w in workers)
        if starting and gave_up:
            why = self._start_error or f"none started within {STARTUP_S:.0f} s"
            for index in pending:
                results[index] = ("error", f"no worker for {self.target} could start: {why}")
            pending.clear()
        for slot, (index, deadline) in list(busy.items()):
            if now >= deadline:
                results[index] = ("timeout", "")
                del busy[slot]
                self.kills += 1
                self.restarts += 1
                workers[slot] = self._replace(workers[slot])

    def _receive(self, workers: list[_Worker], slot: int, busy: dict, results: list) -> None:
        worker = workers[slot]
        try:
            task_id, status, value = worker.conn.recv()
        except (EOFError, OSError):  # the worker died (crash, out-of-memory kill)
            task_id, status, value = "died", "error", f"worker process died (exit code {worker.exit_code()})"
        if task_id == "ready" and status == "ok":
            worker.ready, self.info = True, value
            return
        if not worker.ready:  # it failed before saying ready: its init raised, or it died starting
            self._early_deaths += 1
            self._start_error = value
        elif slot in busy:
            index, _ = busy.pop(slot)
            results[index] = (status, value)
            if task_id != "died":
                return
            self.restarts += 1
        workers[slot] = self._replace(worker)

    def close(self) -> None:
        """Stop every worker, idle or borrowed (a `map` still running then reports its items as errors)."""
        with self._lock:
            self._closed = True
            live, self._live = list(self._live), set()
        idle = []
        with contextlib.suppress(queue.Empty):
            while True:
                idle.append(self._idle.get_nowait())
        for worker in idle:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + CLOSE_GRACE_S
        for worker in idle:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for worker in live + idle:
            worker.kill()

    def __enter__(self) -> DeadlinePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    for pool in list(_POOLS):
        pool.close()
