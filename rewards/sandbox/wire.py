"""What crosses the sandbox's channels: length-prefixed JSON frames and exact-type value encoding.

    frame = encode_frame({"args": encode_value((1, [2.5, "x"]))})
    decode_value(["t", [["i", "0x1"], ["l", [["f", "0x1.4000000000000p+1"], ["s", "x"]]]]])  # (1, [2.5, 'x'])

Values travel as tagged JSON: `["i", hex]` int, `["f", float.hex]` float, `["s", str]`, `["b", hex]`
bytes, `["l"|"t"|"S"|"F", [...]]` list/tuple/set/frozenset, `["d", [[k, v], ...]]` dict, plus
None/True/False. `encode_value` accepts *exact* built-in types only (`type(x) is int`, never a
subclass), so a candidate cannot smuggle an object whose `__eq__` is always true; `decode_value`
rebuilds fresh built-in objects in the judge, so whatever the candidate's process did to its own
encoder, the judge only ever compares plain values it constructed itself. Ints go as hex (linear in
size, no 4300-digit limit). Depth and frame size are bounded; anything else raises `WireError`.

Stdlib only: the sandbox worker imports this file as a top-level module (`python -I -S`).
"""

from __future__ import annotations

import json
import socket
import struct

MAX_FRAME = 16 * 1024 * 1024  # bytes of one JSON frame (a returned value, a call's arguments)
MAX_DEPTH = 64  # nesting of containers in one value
_HEADER = struct.Struct("!I")


class WireError(ValueError):
    """A value that cannot cross the sandbox boundary, or a malformed frame."""


_SEQS = {list: "l", tuple: "t", set: "S", frozenset: "F"}
_SEQ_TYPES = {"l": list, "t": tuple, "S": set, "F": frozenset}


def encode_value(value, depth: int = 0):
    """`value` as tagged JSON; only exact built-in types (no subclasses, no custom objects)."""
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is int:
        return ["i", hex(value)]
    if kind is float:
        return ["f", value.hex()]
    if kind is str:
        return ["s", value]
    if kind is bytes:
        return ["b", value.hex()]
    if kind is complex:
        return ["c", [value.real.hex(), value.imag.hex()]]
    if kind in _SEQS:
        return [_SEQS[kind], [encode_value(v, depth + 1) for v in value]]
    if kind is dict:
        return ["d", [[encode_value(k, depth + 1), encode_value(v, depth + 1)] for k, v in value.items()]]
    raise WireError(f"cannot pass a {kind.__module__}.{kind.__qualname__} across the sandbox "
                    f"(only exact built-in types)")


def decode_value(data, depth: int = 0):
    """The built-in value `encode_value` described; strict about every tag and shape."""
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH}")
    if data is None or type(data) is bool:
        return data
    if type(data) is not list or len(data) != 2 or type(data[0]) is not str:
        raise WireError(f"malformed value {str(data)[:80]!r}")
    tag, body = data
    try:
        if tag == "i" and type(body) is str:
            return int(body, 16)
        if tag == "f" and type(body) is str:
            return float.fromhex(body)
        if tag == "s" and type(body) is str:
            return body
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "c" and type(body) is list and len(body) == 2:
            return complex(float.fromhex(body[0]), float.fromhex(body[1]))
        if tag in _SEQ_TYPES and type(body) is list:
            return _SEQ_TYPES[tag](decode_value(v, depth + 1) for v in body)
        if tag == "d" and type(body) is list:
            return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in _pairs(body)}
    except (TypeError, ValueError, OverflowError) as exc:  # unhashable key, bad hex, ...
        raise WireError(f"malformed {tag!r} value: {exc}") from None
    raise WireError(f"unknown value tag {tag!r}")


def _pairs(body: list):
    for pair in body:
        if type(pair) is not list or len(pair) != 2:
            raise WireError("malformed dict item")
        yield pair


def encode_frame(message: dict) -> bytes:
    data = json.dumps(message, ensure_ascii=True, allow_nan=False).encode("ascii")
    if len(data) > MAX_FRAME:
        raise WireError(f"message of {len(data)} bytes is over the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(data)) + data


def send_frame(sock: socket.socket, message: dict) -> None:
    sock.sendall(encode_frame(message))


def recv_frame(sock: socket.socket) -> dict | None:
    """The next message, or None when the peer closed (or died) before a whole frame arrived."""
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise WireError(f"peer announced a {size}-byte frame (limit {MAX_FRAME})")
    data = _recv_exactly(sock, size)
    if data is None:
        return None
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"frame is not JSON: {exc}") from None
    if type(message) is not dict:
        raise WireError("frame is not a JSON object")
    return message


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        try:
            chunk = sock.recv(min(n - got, 1 << 20))
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
