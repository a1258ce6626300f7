"""FineWeb-style filtering of web documents, offline: JSONL in, kept JSONL out, a count per rule.

    answerkey filter crawl.jsonl kept.jsonl [--config filter.toml] [--gopher_quality.min_doc_words=30]

    from answerkey.pretrain.filter import FilterConfig, filter_file
    metrics = filter_file("crawl.jsonl", "kept.jsonl", FilterConfig())   # {"filter/docs_in": ..., ...}

Each input line is a JSON object with a `text` string (and optionally a `url`); other fields pass
through. The stages run in FineWeb's order (Penedo et al. 2024, https://arxiv.org/abs/2406.17557;
datatrove `examples/fineweb.py`): URL blocklist -> English check -> Gopher repetition -> Gopher
quality -> C4 line rules (which rewrite the text) -> FineWeb quality -> exact dedup -> MinHash
near-dedup -> PII formatting. A doc leaves at the first rule it fails, and that rule is counted in
`filter/removed/<stage>/<rule>`; `filter/docs_in` = `filter/docs_kept` + the sum of the removals.
The rules and their thresholds are in `filter_rules.py`, dedup in `dedup.py`; every threshold is a
config field (`FilterConfig`, a TOML file with one table per stage, e.g. `[gopher_quality]`).

Not here: HTML/WARC text extraction (input is already text; FineWeb ran trafilatura on WARC), the
fastText language model (replaced by a stop-word heuristic, see `filter_rules.English`), and
datatrove's 4.5 M-domain UT1 blocklist (pass your own with `url.blocklist_file`). Dedup runs over the
whole input (FineWeb deduplicated each crawl dump separately: pass one dump per call to match it).
Bad input (not UTF-8, a line that is not a JSON object, no `text` string) raises naming file and line;
the output is written to a temporary file and renamed at the end, so a failed run leaves no output.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from answerkey.config import Section
from answerkey.envs.jsonl import jsonl_lines
from answerkey.pretrain.dedup import Dedup, DedupIndex
from answerkey.pretrain.filter_rules import (
    C4Lines,
    English,
    FineWebQuality,
    GopherQuality,
    GopherRepetition,
    Pii,
    PiiFormatter,
    UrlRules,
    c4_lines,
    english,
    fineweb_quality,
    gopher_quality,
    gopher_repetition,
    load_blocklist,
    url_rules,
)


class FilterConfig(Section):
    """Every stage of the filter; each has `enabled` and its thresholds (FineWeb's by default)."""

    url: UrlRules = UrlRules()
    english: English = English()
    gopher_repetition: GopherRepetition = GopherRepetition()
    gopher_quality: GopherQuality = GopherQuality()
    c4: C4Lines = C4Lines()
    fineweb: FineWebQuality = FineWebQuality()
    dedup: Dedup = Dedup()
    pii: Pii = Pii()


class InputError(ValueError):
    """A line of the input that is not a document; the message names the file and the line."""


def read_docs(path: str | Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    """(line number, row, bytes read) for each non-blank line; raises `InputError` naming file and line."""
    for number, row, size in jsonl_lines(path, InputError):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            got = type(row.get("text")).__name__ if isinstance(row, dict) else type(row).__name__
            raise InputError(f"{path}:{number}: expected an object with a 'text' string, got {got}")
        if row.get("url") is not None and not isinstance(row["url"], str):
            raise InputError(f"{path}:{number}: 'url' must be a string, got {type(row['url']).__name__}")
        yield number, row, size


class DocFilter:
    """The per-document stages (everything but dedup and PII, which need the whole corpus or run last)."""

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        empty = (frozenset(), frozenset())
        self.blocklist = load_blocklist(cfg.url.blocklist_file) if cfg.url.enabled else empty

    def __call__(self, text: str, url: str | None = None) -> tuple[str, str | None]:
        """(text, None) to keep, with the text as C4 rewrote it; (text, "<stage>/<rule>") to drop."""
        cfg = self.cfg
        if cfg.url.enabled and url and (reason := url_rules(url, cfg.url, self.blocklist)):
            return text, reason
        checks = [(cfg.english, english), (cfg.gopher_repetition, gopher_repetition),
                  (cfg.gopher_quality, gopher_quality)]
        for section, rule in checks:
            if section.enabled and (reason := rule(text, section)):
                return text, reason
        if cfg.c4.enabled:
            text, reason = c4_lines(text, cfg.c4)
            if reason:
                return text, reason
        if cfg.fineweb.enabled and (reason := fineweb_quality(text, cfg.fineweb)):
            return text, reason
        return text, None


def _progress(path: Path, show: bool):
    if not show:
        return nullcontext(None)
    return Progress(TextColumn(f"filter {path.name}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())


def filter_file(src: str | Path, dst: str | Path, cfg: FilterConfig | None = None,
                progress: bool = False) -> dict[str, int]:
    """Filter the JSONL `src` into `dst`; returns the `filter/...` counts (see the module docstring)."""
    src, dst, cfg = Path(src), Path(dst), cfg or FilterConfig()
    if not src.is_file():
        raise FileNotFoundError(f"filter input {src} does not exist")
    doc_filter, index = DocFilter(cfg), DedupIndex(cfg.dedup)
    removed: Counter[str] = Counter()
    docs_in = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool, _progress(src, progress) as bar:
        task = bar.add_task("filter", total=src.stat().st_size) if bar else None
        for _, row, size in read_docs(src):
            docs_in += 1
            if bar:
                bar.advance(task, size)
            text, reason = doc_filter(row["text"], row.get("url"))
            if reason is None and not index.add(text):
                reason = "dedup/exact"
            if reason:
                removed[reason] += 1
                continue
            spool.write(json.dumps(row | {"text": text}, ensure_ascii=False) + "\n")
        near = index.near_duplicates()
        removed["dedup/minhash"] += len(near)
        pii = PiiFormatter(cfg.pii)
        spool.seek(0)
        kept = _write_kept(spool, dst, near, pii if cfg.pii.enabled else None)
    metrics = {"filter/docs_in": docs_in, "filter/docs_kept": kept}
    metrics |= {f"filter/removed/{reason}": n for reason, n in sorted(removed.items()) if n}
    metrics |= {f"filter/pii/{kind}": n for kind, n in pii.counts.items()}
    return metrics


def _write_kept(spool, dst: Path, near: set[int], pii: PiiFormatter | None) -> int:
    """Write the spooled survivors that are not near-duplicates to `dst` atomically; returns how many."""
    kept = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for position, line in enumerate(spool):
                if position in near:
                    continue
                row = json.loads(line)
                if pii:
                    row["text"] = pii(row["text"])
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                kept += 1
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return kept


def report(metrics: dict[str, int]) -> Table:
    """The removal counts as a table: one row per rule that removed something, then the kept docs."""
    total = max(1, metrics["filter/docs_in"])
    table = Table("rule", "docs", "% of input", title=f"filter: {metrics['filter/docs_in']} docs in")
    for key, n in metrics.items():
        if key.startswith("filter/removed/"):
            table.add_row(key.removeprefix("filter/removed/"), str(n), f"{100 * n / total:.1f}")
    table.add_row("[bold]kept", str(metrics["filter/docs_kept"]),
                  f"{100 * metrics['filter/docs_kept'] / total:.1f}")
    pii = ", ".join(f"{n} {kind}" for kind, n in metrics.items() if kind.startswith("filter/pii/") and n)
    if pii:
        table.caption = "PII replaced: " + pii.replace("filter/pii/", "")
    return table
