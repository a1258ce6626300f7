"""Calling a component that is either a Ray actor or a plain object, the same way.

    ref = call(worker, "generate", prompts, n, sampling)   # starts the call
    groups = get(ref)                                       # its result, or the exception it raised

The RL loop (`answerkey/loop.py`) drives its rollout workers, learner and weight transport through these
two functions, so the same loop runs on Ray actors (`answerkey rl`, `answerkey/driver.py`) and on plain
objects in one process (`answerkey/local.py`). On a Ray actor, or on anything whose method has a
`.remote` (the FSDP learner group, learner/group.py), `call` submits and returns an ObjectRef at once,
so calls to several workers run in parallel. On a plain object `call` runs the method now and keeps
its result or exception for `get`, so errors surface at the same place in both cases; like Ray, it
first resolves arguments that are themselves results of `call`.

A Ray actor that died raises `ActorDied` from `get` (the loop restarts rollout workers on it). Nothing
here imports Ray: a result can only be a Ray ObjectRef when Ray is already imported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any


class ActorDied(RuntimeError):
    """The Ray actor a call went to is dead (killed, crashed, or its node is gone)."""


@dataclass(frozen=True)
class Finished:
    """The outcome of a call on a plain object: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None


def call(handle: Any, method: str, *args: Any) -> Any:
    """Start `handle.method(*args)`: an ObjectRef for a Ray actor, a `Finished` for a plain object."""
    bound = getattr(handle, method)
    if hasattr(bound, "remote"):
        return bound.remote(*args)
    try:
        return Finished(bound(*(get(a) if isinstance(a, Finished) else a for a in args)))
    except Exception as exc:  # noqa: BLE001 - delivered by get(), where a Ray task's error would be raised
        return Finished(error=exc)


def get(ref: Any) -> Any:
    """The result of a `call` (waiting for a Ray task); re-raises the call's exception."""
    if isinstance(ref, Finished):
        if ref.error is not None:
            raise ref.error
        return ref.value
    ray = sys.modules["ray"]  # only a Ray call returns anything else, so Ray is imported
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        raise ActorDied(str(exc)) from exc


def cause(exc: BaseException) -> BaseException:
    """The exception raised inside the called method (a Ray task error wraps it)."""
    return getattr(exc, "cause", None) or exc
