"""The two ends of one execution: the candidate's server and the judge that runs the tests.

The candidate process (`serve_candidate`, inside the sandbox) runs the model's program and then
only answers "call the entry point with these arguments" over a socket; it never sees the tests.
The judge process (`run_judge`, outside the sandbox, never loads the model's code) runs the tests
with `candidate` bound to a proxy that makes those calls and decodes each answer into fresh
built-in values (`wire`): an `__eq__` that is always true, patched builtins or a patched
`assert` in the candidate's process cannot reach the comparisons, which happen here.

Pass fraction: the tests' `check(candidate)` body (or, without a `check`, the module's top-level
statements, MBPP style) is split into units, one per top-level statement that contains an `assert`
and involves the candidate (directly or through a name assigned from it); each unit passes when it
runs without raising. Other statements (imports, `rng = ...`, `assert True`) run as set-up and do
not count. A unit that raises (wrong value, the candidate raised or died) fails and the next unit
still runs. HumanEval helpers that the tests call (`poly`, `encode_cyclic`) come from the
`prelude` (the problem's prompt, trusted), run in the judge, not from the candidate's program.

Stdlib only: the sandbox worker imports this file as a top-level module (`python -I -S`).
"""

from __future__ import annotations

import ast
import builtins
import socket

from wire import WireError, decode_value, encode_value, recv_frame, send_frame

DETAIL = 300  # characters kept of an error message


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:DETAIL]


# ---------------------------------------------------------------------------------------------
# Candidate side (runs inside the sandbox, after the privilege drop).


def serve_candidate(program: str, entry_point: str, sock: socket.socket) -> None:
    """Run `program`, report how loading went, then answer calls of `entry_point` until EOF."""
    namespace = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        code = compile(program, "<program>", "exec")
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in the source
        send_frame(sock, {"load": "syntax", "error": _describe(exc)})
        return
    try:
        exec(code, namespace)
    except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt included: failed before the tests
        send_frame(sock, {"load": "raised", "error": _describe(exc)})
        return
    function = namespace.get(entry_point)
    if not callable(function):
        send_frame(sock, {"load": "missing", "error": f"the program defines no callable {entry_point!r}"})
        return
    send_frame(sock, {"load": "ok"})
    while (request := recv_frame(sock)) is not None:
        try:
            value = function(*decode_value(request["args"]), **decode_value(request["kwargs"]))
            reply = {"value": encode_value(value)}
        except BaseException as exc:  # noqa: BLE001 - the candidate's failure is this call's result
            reply = {"raised": _describe(exc)}
        send_frame(sock, reply)


# ---------------------------------------------------------------------------------------------
# Judge side (outside the sandbox).


class CandidateError(Exception):
    """A call of the candidate did not return a value (it raised, died, or sent something malformed)."""


class Candidate:
    """Stands for the entry point in the tests: each call is one request to the sandboxed program."""

    def __init__(self, sock: socket.socket, name: str):
        self._sock, self._name, self._dead = sock, name, ""

    def __call__(self, *args, **kwargs):
        if self._dead:
            raise CandidateError(f"{self._name}: {self._dead}")
        try:
            send_frame(self._sock, {"args": encode_value(args), "kwargs": encode_value(kwargs)})
        except OSError:
            self._dead = "the program is no longer running"
            raise CandidateError(f"{self._name}: {self._dead}") from None
        try:
            reply = recv_frame(self._sock)
        except WireError as exc:
            self._dead = f"sent a malformed reply ({exc})"
            raise CandidateError(f"{self._name}: {self._dead}") from None
        if reply is None:
            self._dead = "the program died during a call"
            raise CandidateError(f"{self._name}: {self._dead}")
        if "raised" in reply:
            raise CandidateError(f"{self._name} raised {str(reply['raised'])[:DETAIL]}")
        if "value" not in reply:
            raise CandidateError(f"{self._name}: reply without a value")
        return decode_value(reply["value"])


def split_units(tests: str, entry_point: str) -> tuple[list[ast.stmt], list[tuple[ast.stmt, bool]]]:
    """(module set-up statements, [(statement, counts as a unit)]) of the tests, in order."""
    tree = ast.parse(tests, "<tests>")
    checks = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "check"]
    if checks:
        check = checks[-1]
        module = [s for s in tree.body if not _calls_check(s)]
        body = check.body
        if check.args.args:
            candidate_names = {check.args.args[0].arg, entry_point}
        else:
            candidate_names = {"candidate", entry_point}
    else:
        module, body, candidate_names = [], tree.body, {"candidate", entry_point}
    tainted = set(candidate_names)
    statements = []
    for stmt in body:
        names = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        involves = bool(names & tainted)
        has_assert = any(isinstance(n, ast.Assert) for n in ast.walk(stmt))
        if involves and not has_assert:
            tainted |= {n.id for n in ast.walk(stmt)
                        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        statements.append((stmt, involves and has_assert))
    return module, statements


def _calls_check(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "check")


def run_judge(tests: str, prelude: str, entry_point: str, sock: socket.socket) -> dict:
    """Wait for the candidate to load, then run every unit; the dict is the execution's result."""
    try:
        hello = recv_frame(sock)
    except WireError as exc:
        return {"load": "malformed", "error": str(exc)[:DETAIL]}
    if hello is None:
        return {"load": "exited", "error": "the program exited or crashed before its tests ran"}
    if hello.get("load") != "ok":
        return {"load": str(hello.get("load"))[:20], "error": str(hello.get("error", ""))[:DETAIL]}
    module, statements = split_units(tests, entry_point)
    namespace: dict = {"__name__": "__judge__"}
    exec(compile(prelude, "<prelude>", "exec"), namespace)
    exec(compile(ast.Module(body=module, type_ignores=[]), "<tests>", "exec"), namespace)
    proxy = Candidate(sock, entry_point)
    check_args = namespace.get("check").__code__.co_varnames[:1] if callable(namespace.get("check")) else ()
    for name in {"candidate", entry_point, *check_args}:
        namespace[name] = proxy
    units, shown = [], 0
    for stmt, counts in statements:
        try:
            exec(compile(ast.Module(body=[stmt], type_ignores=[]), "<tests>", "exec"), namespace)
            error = ""
        except Exception as exc:  # noqa: BLE001 - any failure of a unit is that unit's failure
            error = _describe(exc)
        if counts:
            shown += bool(error)
            units.append([not error, f"line {stmt.lineno}: {error}" if error and shown <= 20 else ""])
    return {"load": "ok", "units": units}
