"""DeadlinePool (`rewards/deadline_pool.py`): hard kill of a hung item, replacement of a dead worker,
the memory limit, start-up failures named, and a close that leaves no process — the properties the
math checker and the loop's RewardWorkers both rely on."""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path

import pytest

from answerkey.rewards.deadline_pool import MEMORY_LIMIT_BYTES, DeadlinePool


def children() -> set[int]:
    """Pids of this process's live children (a leaked worker shows up here)."""
    me, found = str(os.getpid()), set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue  # it exited while we looked
        if fields.get("PPid", "").strip() == me and not fields.get("State", "").startswith("Z"):
            found.add(int(status.parent.name))
    return found


def test_an_overrunning_item_is_killed_and_the_pool_recovers():
    pool = DeadlinePool("time:sleep", workers=1)  # time.sleep(seconds): a stand-in for a hung sympy call
    try:
        assert pool.map([(60,), (0,), (0,)], timeout_s=0.5) == [("timeout", ""), ("ok", None), ("ok", None)]
        assert pool.kills == 1 and pool.restarts == 1
    finally:
        pool.close()


def test_each_item_may_have_its_own_bound():
    with DeadlinePool("time:sleep", workers=2) as pool:
        assert pool.map([(60,), (0.01,)], timeout_s=[0.5, 60]) == [("timeout", ""), ("ok", None)]
        with pytest.raises(ValueError, match="one per item"):
            pool.map([(0,), (0,)], timeout_s=[1.0])


def test_a_crashing_worker_is_an_error_and_is_replaced():
    pool = DeadlinePool("os:_exit", workers=1)  # os._exit(3) kills the worker mid-item
    try:
        outcomes = pool.map([(3,), (3,)], timeout_s=5)
        assert [kind for kind, _ in outcomes] == ["error", "error"]
        assert "died (exit code 3)" in outcomes[0][1]
        assert pool.kills == 0 and pool.restarts == 2
    finally:
        pool.close()


def test_an_exception_in_the_target_is_that_items_error():
    pool = DeadlinePool("math:sqrt", workers=1)
    try:
        assert pool.map([(4.0,), (-1.0,)], timeout_s=5) == [("ok", 2.0),
                                                            ("error", "ValueError: math domain error")]
    finally:
        pool.close()


def test_a_result_that_cannot_be_sent_back_is_that_items_error():
    with DeadlinePool("threading:Lock", workers=1) as pool:
        (kind, detail), = pool.map([()], timeout_s=5)
        assert kind == "error" and "could not be sent back" in detail and "pickle" in detail
        assert pool.map([()], timeout_s=5)[0][0] == "error" and pool.restarts == 0  # the worker lives on


def test_workers_run_under_the_memory_limit_and_an_allocation_past_it_raises_memory_error():
    with DeadlinePool("resource:getrlimit", workers=1) as pool:
        (kind, (soft, _hard)), = pool.map([(resource.RLIMIT_AS,)], timeout_s=30)
        assert kind == "ok" and soft == MEMORY_LIMIT_BYTES
    with DeadlinePool("builtins:bytearray", workers=1, memory_limit_bytes=1 << 30) as pool:
        outcomes = pool.map([(2 << 30,), (16,)], timeout_s=30)
        assert outcomes[0] == ("error", "MemoryError: ") and outcomes[1] == ("ok", bytearray(16))
        assert pool.restarts == 0
    with DeadlinePool("resource:getrlimit", workers=1, memory_limit_bytes=None) as pool:
        got = pool.map([(resource.RLIMIT_AS,)], timeout_s=30)[0]
        assert got == ("ok", resource.getrlimit(resource.RLIMIT_AS))


def test_start_returns_what_init_returned_and_a_failing_init_is_named():
    with DeadlinePool("math:sqrt", workers=2, init="os:getpid") as pool:
        pid = pool.start()  # init's return value, from a worker (not this process)
        assert pid in pool.pids() and pid != os.getpid() and len(pool.pids()) == 2
    before = children()
    with pytest.raises(RuntimeError,
                       match=r"worker for math:sqrt could not start: ValueError: math domain error"):
        DeadlinePool("math:sqrt", workers=2, init="math:sqrt", init_args=(-1.0,)).start()
    assert children() <= before


def test_a_pool_whose_workers_cannot_start_fails_its_items_by_name_instead_of_hanging():
    with DeadlinePool("math:sqrt", workers=1, init="no_such_module_xyz:f") as pool:
        (kind, detail), = pool.map([(4.0,)], timeout_s=5)
        assert kind == "error" and "no worker for math:sqrt could start" in detail
        assert "ModuleNotFoundError" in detail and "no_such_module_xyz" in detail


def test_close_leaves_no_process_idle_or_busy():
    before = children()
    pool = DeadlinePool("time:sleep", workers=2)
    pool.map([(0,), (0,)], timeout_s=30)  # both workers started and idle
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.extend(pool.map([(600,)], timeout_s=600)))
    thread.start()  # one worker now busy with an item that would run for 10 minutes
    pids = pool.pids()
    assert len(pids) == 2 and not set(pids) & before
    pool.close()
    thread.join(timeout=60)
    assert not thread.is_alive() and outcome[0][0] == "error"  # the running item is failed, loudly
    assert pool.pids() == [] and children() <= before, "close() left a worker process running"
    with pytest.raises(RuntimeError, match="closed"):
        pool.map([(0,)], timeout_s=1)
