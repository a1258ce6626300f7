"""The per-document rules of the web-data filter, each a pure function with its own typed settings.

    reason = gopher_quality(text, GopherQuality())   # None = keep, else e.g. "gopher_quality/short_doc"
    text, reason = c4_lines(text, C4Lines())         # C4 rewrites the text (drops lines) or drops the doc

Re-implemented from FineWeb's datatrove pipeline (datatrove's `examples/fineweb.py`; thresholds as there)
in pure Python, so nothing here needs nltk, spaCy, fastText or a download. Departures, all deliberate:
- words come from one regex (`WORD`: runs of letters/digits, apostrophes inside, and each punctuation
  mark alone), not nltk's `word_tokenize`; sentences are split at `.`, `!`, `?` followed by a space,
  not nltk's punkt. Counts near a threshold can differ by a word or a sentence.
- the language check is a stop-word heuristic (`English`), a stand-in for FineWeb's fastText lid.176
  (`__label__en` > 0.65), which would need a model download: it keeps a doc when enough of its words
  are common English function words. It separates English prose from other Latin-script languages and
  from code, not mixed-language pages as well as fastText does.
- URL blocking matches the host and each parent domain against a small bundled list plus the user's
  file (`UrlRules.blocklist_file`), instead of datatrove's 4.5 M-domain UT1 list with tldextract.
- PII emails are matched case-insensitively (datatrove's regex is lowercase only, so
  `Jane.Doe@Example.org` slips through it).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from itertools import cycle
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from answerkey.config import Section

WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
PUNCT = re.compile(r"^[^\w\s]$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
PARAGRAPH = re.compile(r"\n{2,}")
TERMINAL = (".", "'", '"', "!", "?")  # FineWeb's line-ending punctuation


def words_of(text: str) -> list[str]:
    """Word and punctuation tokens (see the module docstring)."""
    return WORD.findall(text)


# ---------------------------------------------------------------------------------------------------
# URL blocklist


# A starter list only (a few adult and malware domains, as examples of the categories UT1 blocks);
# real runs should pass a full list through `blocklist_file`.
BLOCKED_DOMAINS = frozenset({
    "pornhub.com", "xvideos.com", "xnxx.com", "xhamster.com", "redtube.com", "youporn.com", "onlyfans.com",
    "chaturbate.com", "livejasmin.com", "stripchat.com", "malware.wicar.org", "testsafebrowsing.appspot.com",
})
BANNED_URL_WORDS = frozenset({"porn", "porno", "xxx", "sex", "hentai", "nsfw", "camgirl", "milf", "escort"})
SOFT_BANNED_URL_WORDS = frozenset({"adult", "nude", "naked", "hot", "girls", "cam", "cams", "dating",
                                   "erotic", "sexy", "babes", "casino", "viagra"})


class UrlRules(Section):
    enabled: bool = True
    """Drop docs whose `url` is on the blocklist (docs without a url pass)."""
    blocklist_file: str | None = None
    """Extra blocklist, one domain (blocks its subdomains too) or full URL per line; '#' starts a comment."""
    soft_word_threshold: int = Field(2, ge=1)
    """Drop a URL with at least this many soft-banned words among its tokens (datatrove: 2)."""


def load_blocklist(path: str | None) -> tuple[frozenset[str], frozenset[str]]:
    """(domains, urls): the bundled domains plus those in `path`; an unreadable file raises naming it."""
    domains, urls = set(BLOCKED_DOMAINS), set()
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"url.blocklist_file {path}: cannot be read ({exc})") from None
        for line in lines:
            entry = line.split("#", 1)[0].strip().lower()
            if "/" in entry:
                urls.add(entry.rstrip("/"))
            elif entry:
                domains.add(entry.removeprefix("www."))
    return frozenset(domains), frozenset(urls)


def url_rules(url: str, cfg: UrlRules, blocklist: tuple[frozenset[str], frozenset[str]]) -> str | None:
    domains, urls = blocklist
    url = url.strip().lower()
    host = (urlsplit(url if "//" in url else f"//{url}").hostname or "").removeprefix("www.")
    parts = host.split(".")
    if any(".".join(parts[i:]) in domains for i in range(len(parts) - 1)):
        return "url/domain"
    if url.rstrip("/") in urls or url.split("://", 1)[-1].rstrip("/") in urls:
        return "url/listed_url"
    tokens = set(re.split(r"[^a-z0-9]+", url))
    if tokens & BANNED_URL_WORDS:
        return "url/banned_word"
    if len(tokens & SOFT_BANNED_URL_WORDS) >= cfg.soft_word_threshold:
        return "url/soft_banned_words"
    return None


# ---------------------------------------------------------------------------------------------------
# Language: a stop-word heuristic (stand-in for fastText lid; see the module docstring)

ENGLISH_STOP_WORDS = frozenset({
    "the", "of", "and", "to", "a", "in", "is", "it", "that", "for", "was", "on", "are", "as", "with",
    "be", "by", "at", "this", "have", "from", "or", "an", "but", "not", "they", "his", "her", "she",
    "he", "we", "you", "i", "which", "their", "were", "been", "has", "had", "will", "would", "there",
    "what", "all", "can", "if", "one", "so", "no", "more", "about", "who", "when", "than", "into",
    "its", "our", "them", "also", "these", "some", "do", "does",
})  # about 60 of the most frequent English words


class English(Section):
    enabled: bool = True
    """Keep only docs that look English (stop-word heuristic; FineWeb: fastText lid.176 score > 0.65)."""
    min_stop_word_ratio: float = Field(0.2, ge=0, le=1)
    """Share of a doc's words that must be common English function words (English prose and docs score
    above it; French, German, Spanish, Italian, Dutch and Portuguese paragraphs and Python source below)."""


def english(text: str, cfg: English) -> str | None:
    words = [w.lower() for w in words_of(text) if w[0].isalpha()]
    if not words or sum(w in ENGLISH_STOP_WORDS for w in words) / len(words) < cfg.min_stop_word_ratio:
        return "language/not_english"
    return None


# ---------------------------------------------------------------------------------------------------
# Gopher repetition (Rae et al. 2021, Table A1)


class GopherRepetition(Section):
    enabled: bool = True
    """Drop docs that repeat lines, paragraphs or n-grams (Gopher, Table A1)."""
    dup_line_frac: float = 0.30
    """Max share of lines that are duplicates of an earlier line."""
    dup_para_frac: float = 0.30
    """Max share of paragraphs (split at blank lines) that are duplicates."""
    dup_line_char_frac: float = 0.20
    """Max share of characters in duplicated lines."""
    dup_para_char_frac: float = 0.20
    """Max share of characters in duplicated paragraphs."""
    top_n_grams: list[tuple[int, float]] = [(2, 0.20), (3, 0.18), (4, 0.16)]
    """(n, max share of characters covered by the most frequent n-gram)."""
    dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    """(n, max share of characters in n-grams that occur more than once)."""

    @field_validator("top_n_grams", "dup_n_grams", mode="before")
    @classmethod
    def _pairs(cls, v):  # TOML has arrays, not tuples: [[2, 0.2], ...]
        return [tuple(pair) if isinstance(pair, list) else pair for pair in v] if isinstance(v, list) else v


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(elements that repeat an earlier one, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count, chars = count + 1, chars + len(item)
        else:
            seen.add(item)
    return count, chars


def _repeated_ngram_chars(words: list[str], n: int) -> int:
    """Characters of n-grams seen before, skipping past each repeat (datatrove's `find_all_duplicate`)."""
    seen: set[str] = set()
    chars, i = 0, 0
    while i < len(words) - n + 1:
        gram = " ".join(words[i:i + n])
        if gram in seen:
            chars, i = chars + len(gram), i + n
        else:
            seen.add(gram)
            i += 1
    return chars


def gopher_repetition(text: str, cfg: GopherRepetition) -> str | None:
    size = max(1, len(text))
    paragraphs = PARAGRAPH.split(text.strip())
    count, chars = _duplicates(paragraphs)
    if count / len(paragraphs) > cfg.dup_para_frac:
        return "gopher_repetition/dup_para_frac"
    if chars / size > cfg.dup_para_char_frac:
        return "gopher_repetition/dup_para_char_frac"
    lines = text.splitlines() or [""]
    count, chars = _duplicates(lines)
    if count / len(lines) > cfg.dup_line_frac:
        return "gopher_repetition/dup_line_frac"
    if chars / size > cfg.dup_line_char_frac:
        return "gopher_repetition/dup_line_char_frac"
    words = words_of(text)
    for n, limit in cfg.top_n_grams:
        grams = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
        if grams:
            gram, times = grams.most_common(1)[0]
            if len(gram) * times / size > limit:
                return f"gopher_repetition/top_{n}_gram"
    for n, limit in cfg.dup_n_grams:
        if _repeated_ngram_chars(words, n) / size > limit:
            return f"gopher_repetition/duplicated_{n}_n_grams"
    return None


# ---------------------------------------------------------------------------------------------------
# Gopher quality


class GopherQuality(Section):
    enabled: bool = True
    """Drop docs that fail Gopher's quality heuristics (length, word shape, symbols, stop words)."""
    min_doc_words: int = 50
    """Fewest non-punctuation words."""
    max_doc_words: int = 100_000
    """Most non-punctuation words."""
    min_avg_word_length: float = 3
    """Shortest mean word length (characters)."""
    max_avg_word_length: float = 10
    """Longest mean word length (characters)."""
    max_symbol_word_ratio: float = 0.1
    """Max '#' per word, and max ellipses ('...' or '…') per word."""
    max_bullet_lines_ratio: float = 0.9
    """Max share of lines that start with a bullet ('•' or '-')."""
    max_ellipsis_lines_ratio: float = 0.3
    """Max share of lines that end with an ellipsis."""
    min_alpha_words_ratio: float = 0.8
    """Min share of words that contain a letter."""
    min_stop_words: int = 2
    """Fewest occurrences of Gopher's stop words (the, be, to, of, and, that, have, with)."""


GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})


def gopher_quality(text: str, cfg: GopherQuality) -> str | None:
    tokens = words_of(text)
    words = [w for w in tokens if not PUNCT.match(w)]
    n = len(words)
    if n < cfg.min_doc_words:
        return "gopher_quality/short_doc"
    if n > cfg.max_doc_words:
        return "gopher_quality/long_doc"
    mean = sum(map(len, words)) / n
    if mean < cfg.min_avg_word_length:
        return "gopher_quality/below_avg_word_length"
    if mean > cfg.max_avg_word_length:
        return "gopher_quality/above_avg_word_length"
    if text.count("#") / n > cfg.max_symbol_word_ratio:
        return "gopher_quality/too_many_hashes"
    if (text.count("...") + text.count("…")) / n > cfg.max_symbol_word_ratio:
        return "gopher_quality/too_many_ellipsis"
    lines = text.splitlines() or [""]
    bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
    if bullets / len(lines) > cfg.max_bullet_lines_ratio:
        return "gopher_quality/too_many_bullets"
    ellipses = sum(line.rstrip().endswith(("...", "…")) for line in lines)
    if ellipses / len(lines) > cfg.max_ellipsis_lines_ratio:
        return "gopher_quality/too_many_end_ellipsis"
    if sum(any(c.isalpha() for c in w) for w in tokens) / n < cfg.min_alpha_words_ratio:
        return "gopher_quality/below_alpha_threshold"
    if sum(w.lower() in GOPHER_STOP_WORDS for w in words) < cfg.min_stop_words:
        return "gopher_quality/too_few_stop_words"
    return None


# ---------------------------------------------------------------------------------------------------
# C4 line rules (Raffel et al. 2020), as FineWeb configures them


CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                  "use cookies")


class C4Lines(Section):
    enabled: bool = True
    """Drop boilerplate lines (and docs with lorem ipsum, '{' or too few sentences left), as C4 did."""
    filter_no_terminal_punct: bool = False
    """Also drop lines that do not end in terminal punctuation (C4: on; FineWeb: off)."""
    min_words_per_line: int = 3
    """Drop lines with fewer words."""
    max_word_length: int = 1000
    """Drop lines with a longer word (characters)."""
    min_sentences: int = 5
    """Drop the doc when fewer sentences are left after the line rules."""


def c4_lines(text: str, cfg: C4Lines) -> tuple[str, str | None]:
    """(the text with the kept lines, None) or (text, reason) when the whole doc is dropped."""
    kept, sentences = [], 0
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if any(len(w) > cfg.max_word_length for w in words):
            continue
        line = CITATION.sub("", line)
        if cfg.filter_no_terminal_punct and (not line.endswith(TERMINAL) or line.endswith("...")):
            continue
        if len(words) < cfg.min_words_per_line:
            continue
        lower = line.lower()
        if "lorem ipsum" in lower:
            return text, "c4/lorem_ipsum"
        if "javascript" in lower:
            continue
        if "{" in line:
            return text, "c4/curly_bracket"
        if any(p in lower for p in POLICY_PHRASES):
            continue
        sentences += len(SENTENCE_END.split(line))
        kept.append(line)
    if sentences < cfg.min_sentences:
        return text, "c4/too_few_sentences"
    return "\n".join(kept).strip(), None


# ---------------------------------------------------------------------------------------------------
# FineWeb's own quality rules (Penedo et al. 2024, section 3.6 and App. E.4)


class FineWebQuality(Section):
    enabled: bool = True
    """Drop docs that fail FineWeb's line-level quality rules."""
    line_punct_thr: float = 0.12
    """Drop when at most this share of lines ends in terminal punctuation."""
    short_line_thr: float = 0.67
    """Drop when at least this share of lines is short."""
    short_line_length: int = 30
    """A line of at most this many characters is short."""
    char_duplicates_ratio: float = 0.01
    """Drop when at least this share of characters sits in duplicated lines (code and App. E.4; the paper's
    section 3.6 says 0.1)."""
    new_line_ratio: float = 0.3
    """Drop when newlines per word exceed this ("list_ratio")."""


def fineweb_quality(text: str, cfg: FineWebQuality) -> str | None:
    lines = text.split("\n")
    if sum(line.endswith(TERMINAL) for line in lines) / len(lines) <= cfg.line_punct_thr:
        return "fineweb/line_punct_ratio"
    if sum(len(line) <= cfg.short_line_length for line in lines) / len(lines) >= cfg.short_line_thr:
        return "fineweb/short_line_ratio"
    non_empty = [line for line in lines if line.strip()]
    if _duplicates(non_empty)[1] / max(1, len(text.replace("\n", ""))) >= cfg.char_duplicates_ratio:
        return "fineweb/char_dup_ratio"
    if text.count("\n") / max(1, len(words_of(text))) > cfg.new_line_ratio:
        return "fineweb/list_ratio"
    return None


# ---------------------------------------------------------------------------------------------------
# PII formatting (datatrove's PIIFormatter: emails and public IPv4 only)

EMAIL = re.compile(
    r"\b[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
    r"|\[(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?|[a-z0-9-]*[a-z0-9]:)])", re.IGNORECASE)
IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}"
                  r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)")


class Pii(Section):
    enabled: bool = True
    """Replace email addresses and public IPv4 addresses in kept docs (FineWeb's PII step)."""
    email_replacements: list[str] = ["email@example.com", "firstname.lastname@example.org"]
    """Used in turn for each email found."""
    ip_replacements: list[str] = ["22.214.171.124", "126.96.36.199", "188.8.131.52", "184.108.40.206",
                                  "220.127.116.11", "18.104.22.168"]
    """Used in turn for each public IPv4 found (datatrove's list); private, loopback and reserved ones
    stay."""


class PiiFormatter:
    """Round-robin replacement across all docs of a run (as datatrove); counts what it replaced."""

    def __init__(self, cfg: Pii):
        self.emails, self.ips = cycle(cfg.email_replacements), cycle(cfg.ip_replacements)
        self.counts = {"emails": 0, "ips": 0}

    def _email(self, match: re.Match) -> str:
        self.counts["emails"] += 1
        return next(self.emails)

    def _ip(self, match: re.Match) -> str:
        try:
            public = ipaddress.ip_address(match.group(0)).is_global
        except ValueError:  # e.g. leading zeros ("01.2.3.4"): not an address Python accepts, left as is
            public = False
        if not public:
            return match.group(0)
        self.counts["ips"] += 1
        return next(self.ips)

    def __call__(self, text: str) -> str:
        return IPV4.sub(self._ip, EMAIL.sub(self._email, text))
