"""`answerkey.handles` on plain objects: `call` / `get` behave as on a Ray actor (tests/test_driver.py and
tests/test_driver_faults.py run the loop on actors)."""

from __future__ import annotations

import pytest

from answerkey.handles import CallFailed, Finished, call, get


class Counter:
    def __init__(self):
        self.total = 0

    def add(self, n: int) -> int:
        self.total += n
        return self.total

    def fail(self) -> None:
        raise ValueError("no")


def test_call_runs_a_plain_method_at_once_and_get_returns_its_result():
    counter = Counter()
    ref = call(counter, "add", 2)
    assert isinstance(ref, Finished) and counter.total == 2 and get(ref) == 2


def test_a_result_of_call_passed_as_an_argument_is_resolved_first():
    counter = Counter()
    assert get(call(counter, "add", call(counter, "add", 1))) == 2


def test_an_exception_surfaces_at_get_as_call_failed_naming_the_method():
    failed = call(Counter(), "fail")  # nothing raises yet, as with a Ray task
    with pytest.raises(CallFailed, match=r"Counter.fail raised ValueError\('no'\)") as info:
        get(failed)
    assert isinstance(info.value.cause, ValueError) and info.value.__cause__ is info.value.cause
