"""Calling a component that is either a Ray actor or a plain object, the same way.

    ref = call(worker, "generate", prompts, n, sampling)   # starts the call
    groups = get(ref)                                       # its result, or the exception it raised

The RL loop (`answerkey/loop.py`) drives its rollout workers, learner and weight transport through these
two functions, so the same loop runs on Ray actors (`answerkey rl`, `answerkey/driver.py`) and on plain
objects in one process (`answerkey/local.py`). On a Ray actor, or on anything whose method has a
`.remote` (the FSDP learner group, learner/group.py), `call` submits and returns an ObjectRef at once,
so calls to several workers run in parallel. On a plain object `call` runs the method now and keeps
its result or exception for `get`; like Ray, it first resolves arguments that are themselves results
of `call`. Either way `get` raises the same two errors: `CallFailed` when the method raised (its
exception is `.cause`), `ActorDied` when the Ray actor is gone (the loop replaces rollout workers on
it). Nothing here imports Ray: a result can only be a Ray ObjectRef when Ray is already imported.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any


class ActorDied(RuntimeError):
    """The Ray actor a call went to is dead (killed, crashed, or its node is gone)."""


class CallFailed(RuntimeError):
    """The called method raised; `cause` is its exception (also chained as `__cause__`)."""

    def __init__(self, method: str, cause: BaseException):
        super().__init__(f"{method} raised {cause!r}")
        self.method, self.cause = method, cause


@dataclass(frozen=True)
class Finished:
    """The outcome of a call on a plain object: its value, or the exception it raised."""

    method: str
    value: Any = None
    error: BaseException | None = None


def call(handle: Any, method: str, *args: Any) -> Any:
    """Start `handle.method(*args)`: an ObjectRef for a Ray actor, a `Finished` for a plain object."""
    bound = getattr(handle, method)
    if hasattr(bound, "remote"):
        return bound.remote(*args)
    name = f"{type(handle).__name__}.{method}"
    try:
        return Finished(name, bound(*(get(a) if isinstance(a, Finished) else a for a in args)))
    except Exception as exc:  # noqa: BLE001 - delivered by get(), where a Ray task's error would be raised
        return Finished(name, error=exc)


def get(ref: Any) -> Any:
    """The result of a `call` (waiting for a Ray task). Raises `CallFailed` when the method raised and
    `ActorDied` when the actor is gone; any other Ray error (a lost object, ...) propagates as it is."""
    if isinstance(ref, Finished):
        if ref.error is not None:
            raise CallFailed(ref.method, ref.error) from ref.error
        return ref.value
    ray = sys.modules["ray"]  # only a Ray call returns anything else, so Ray is imported
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        raise ActorDied(str(exc)) from exc
    except ray.exceptions.RayTaskError as exc:  # its message starts "ray::Class.method() (pid=...)"
        method = re.search(r"ray::([\w.]+)\(", str(exc))
        raise CallFailed(method.group(1) if method else "a Ray task", exc.cause) from exc
