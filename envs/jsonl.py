"""Read JSONL with errors that name the file, the line and the field.

    rows = read_rows("data/gsm8k/test.jsonl", fields=("question", "answer"))
    # DatasetError: data/gsm8k/test.jsonl:17: field 'answer' is missing (expected a string)
    for line_no, value, nbytes in jsonl_lines("crawl.jsonl", error=InputError): ...

`jsonl_lines` is the one streaming reader every JSONL input goes through (datasets here, the
pretraining corpus, SFT conversations, the web filter's input), each caller checking the shape of
its own rows and raising its own error type. A `.gz` file is read through gzip.

`DATA` is the folder of the datasets that ship with the package (envs/data/: GSM8K train and test,
MATH-500; their sources and licenses are in envs/data/README.md).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"


class DatasetError(ValueError):
    """A dataset file or row that cannot be used; the message names file, line and field."""


def jsonl_lines(path: str | Path, error: type[ValueError] = DatasetError) -> Iterator[tuple[int, Any, int]]:
    """(line number, parsed value, bytes of the line) for each non-blank line, streamed; a line that is not
    UTF-8 or not JSON raises `error` naming the file and the line."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{path}:{number}: not valid UTF-8 "
                            f"(byte {raw[exc.start]:#04x} at offset {exc.start})") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            yield number, value, len(raw)


def read_rows(path: str | Path, fields: Sequence[str]) -> list[dict]:
    """Every row of a JSONL file, each checked to have the string `fields`. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    rows = []
    for line_no, row, _ in jsonl_lines(path):
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        for name in fields:
            if name not in row:
                raise DatasetError(f"{path}:{line_no}: field {name!r} is missing (expected a string)")
            if not isinstance(row[name], str) or not row[name].strip():
                raise DatasetError(f"{path}:{line_no}: field {name!r} must be a non-empty string, "
                                   f"got {row[name]!r:.80}")
        rows.append(row)
    if not rows:
        raise DatasetError(f"{path}: contains no rows")
    return rows


def stem(path: str | Path) -> str:
    """A dataset file's name without its `.gz` and last suffix: "data/test.jsonl.gz" -> "test"."""
    return Path(str(path).removesuffix(".gz")).stem
