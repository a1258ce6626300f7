"""A text corpus: documents read from files, checked, and encoded once into memory-mapped token shards.

    docs = list(documents(["data/web.jsonl", "data/book.txt"]))    # checked; errors name file and line
    shards = encode_corpus(tokenizer, paths, "runs/base/data", heldout_fraction=0.05)
    shards.train[:10]                                              # np.memmap of token ids (uint16/uint32)

A `.jsonl` file holds one document per line, in its `text` field (blank lines are skipped); any
other file is one document. A directory stands for every file under it (sorted). Each document is
encoded as `<|endoftext|>` + its tokens, so documents are separated by `<|endoftext|>` and a sample
that starts from that token begins a new document. Special-token strings inside a document (a
rendered conversation, say) are encoded as the special tokens.

A document goes to the held-out shard when the CRC32 of its text falls in the `heldout_fraction` of
hash space, so the split is stable under reordering and duplicates land on the same side. The
shards are written once (`train.bin`, `heldout.bin`, `shards.json`) and read back as `np.memmap`,
so training never re-tokenizes text. Errors (missing file, empty file, not UTF-8, a JSONL line that
is not JSON or has no string `text`) raise `CorpusError` naming the file and line.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from answerkey import chat
from answerkey.envs.jsonl import jsonl_lines

ENCODE_CHUNK = 512  # documents per batched encode call


class CorpusError(ValueError):
    """A corpus file that cannot be read as documents; the message names the file and line."""


def corpus_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files `paths` name (a directory = every file under it, sorted); raise when a path does not
    exist."""
    if not paths:
        raise CorpusError("no corpus files given")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not found:
                raise CorpusError(f"{p}: directory holds no files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise CorpusError(f"{p}: no such file or directory")
    return files


def documents(paths: Sequence[str | Path]) -> Iterator[str]:
    """Every document of the corpus files, in order."""
    for path in corpus_files(paths):
        yield from file_documents(path)


def file_documents(path: Path) -> Iterator[str]:
    """The documents of one file: one per JSONL row (`text`), or the whole file."""
    if path.suffix != ".jsonl":
        yield decode_utf8(read_nonempty(path), path, 1)
        return
    for number, row in jsonl_rows(path):
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            got = (f"got {type(row).__name__}" if not isinstance(row, dict) else
                   "it has no 'text' field" if "text" not in row else f"'text' is {type(text).__name__}")
            raise CorpusError(f"{path}:{number}: expected an object with a string 'text' field, {got}")
        yield text


def read_nonempty(path: Path) -> bytes:
    data = path.read_bytes()
    if not data.strip():
        raise CorpusError(f"{path}: empty file")
    return data


def jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of every non-blank line of a JSONL file, streamed
    (`envs.jsonl.jsonl_lines`)."""
    count = 0
    for number, row, _ in jsonl_lines(path, CorpusError):
        count += 1
        yield number, row
    if count == 0:
        raise CorpusError(f"{path}: empty file (no rows)")


def decode_utf8(raw: bytes, path: Path, first_line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw[: exc.start].count(b"\n")
        raise CorpusError(f"{path}:{line}: not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start})") from None


def is_heldout(text: str, fraction: float) -> bool:
    """The stable document split: CRC32 of the UTF-8 text, scaled to [0, 1)."""
    return zlib.crc32(text.encode("utf-8")) / 2**32 < fraction


@dataclass
class Shards:
    """The encoded corpus: token ids of the training and held-out documents, memory-mapped."""

    directory: Path
    train: np.ndarray  # (tokens,) memmap
    heldout: np.ndarray  # (tokens,) memmap
    info: dict

    @classmethod
    def open(cls, directory: str | Path) -> Shards:
        directory = Path(directory)
        info = json.loads((directory / "shards.json").read_text())
        dtype = np.dtype(info["dtype"])
        return cls(directory, *(_memmap(directory / f"{split}.bin", dtype) for split in ("train", "heldout")),
                   info)


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def encode_corpus(tokenizer, paths: Sequence[str | Path], out_dir: str | Path,
                  heldout_fraction: float) -> Shards:
    """Encode every document of `paths` into `out_dir/{train,heldout}.bin`; returns the opened shards."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eot = tokenizer.convert_tokens_to_ids(chat.END_OF_TEXT)
    dtype = np.uint16 if len(tokenizer) <= 2**16 else np.uint32
    counts = {"train": [0, 0], "heldout": [0, 0]}  # documents, tokens
    backend = tokenizer.backend_tokenizer
    with open(out_dir / "train.bin", "wb") as train, open(out_dir / "heldout.bin", "wb") as heldout:
        for chunk in _chunks(documents(paths), ENCODE_CHUNK):
            for text, enc in zip(chunk, backend.encode_batch(chunk, add_special_tokens=False), strict=True):
                split = "heldout" if is_heldout(text, heldout_fraction) else "train"
                ids = np.asarray([eot, *enc.ids], dtype=dtype)
                (heldout if split == "heldout" else train).write(ids.tobytes())
                counts[split][0] += 1
                counts[split][1] += len(ids)
    files = corpus_files(paths)
    info = {"dtype": np.dtype(dtype).name, "files": [str(f) for f in files],
            "bytes": [f.stat().st_size for f in files],
            "heldout_fraction": heldout_fraction, "vocab_size": len(tokenizer),
            **{f"{split}_{what}": counts[split][i]
               for split in counts for i, what in enumerate(("documents", "tokens"))}}
    (out_dir / "shards.json").write_text(json.dumps(info, indent=2))
    return Shards.open(out_dir)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
