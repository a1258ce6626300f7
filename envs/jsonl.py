"""Read dataset rows from JSONL with errors that name the file, the line and the field.

    rows = read_rows("data/gsm8k/test.jsonl", fields=("question", "answer"))
    # DatasetError: data/gsm8k/test.jsonl:17: field 'answer' is missing (expected a string)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


class DatasetError(ValueError):
    """A dataset file or row that cannot be used; the message names file, line and field."""


def read_rows(path: str | Path, fields: Sequence[str]) -> list[dict]:
    """Every row of a JSONL file, each checked to have the string `fields`. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            for name in fields:
                if name not in row:
                    raise DatasetError(f"{path}:{line_no}: field {name!r} is missing (expected a string)")
                if not isinstance(row[name], str) or not row[name].strip():
                    raise DatasetError(f"{path}:{line_no}: field {name!r} must be a non-empty string, got {row[name]!r:.80}")
            rows.append(row)
    if not rows:
        raise DatasetError(f"{path}: contains no rows")
    return rows
