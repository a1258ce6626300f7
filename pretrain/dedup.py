"""Exact and MinHash near-duplicate detection over a corpus, FineWeb's settings by default.

    index = DedupIndex(Dedup())
    for text in texts:
        index.add(text)                  # False when it is an exact copy of an earlier doc
    dropped = index.near_duplicates()    # positions (add order) of the docs to drop: all but one per cluster

Exact: sha1 of the text with whitespace collapsed (FineWeb itself relied on MinHash alone).
MinHash (Broder 1997), as datatrove's `MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8,
seed=1)` with FineWeb's sha1 64-bit shingle hashes: the text is normalized (lowercase, whitespace
collapsed, punctuation removed, diacritics stripped, digit runs -> "0"), cut into word 5-grams, each
hashed to 64 bits, then 112 hash functions `(a*h + b) mod (2^61 - 1)` (a, b drawn from
`RandomState(seed)`, all a's then all b's, the product wrapping at 2^64 exactly as datatrove's numpy
code does) keep their minimum. Two docs are candidates when all 8 minima of any of the 14 buckets
agree: P = 1 - (1 - J^8)^14 for Jaccard similarity J of their 5-gram sets (0.56 at J = 0.70, 0.92 at
0.80, 0.99 at 0.85). Candidates are joined transitively (union-find) and the first doc of each
cluster, in input order, is kept. Implemented with numpy and hashlib rather than a library
(datasketch would add a dependency for ~40 lines, and its permutation order differs from datatrove's).

Memory: per kept doc, one 64-bit key per bucket (14 x 8 bytes in a small numpy array) and a 20-byte
sha1 in a set, a few hundred bytes with Python's overhead.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata

import numpy as np
from pydantic import Field

from answerkey.config import Section

MERSENNE = np.uint64((1 << 61) - 1)
_PUNCTUATION = str.maketrans("", "", string.punctuation + "—–“”‘’«»„…¿¡、。，！？：；（）【】《》")
_SPACES = re.compile(r"\s+")
_DIGITS = re.compile(r"\d+")


class Dedup(Section):
    exact: bool = True
    """Drop exact copies (same text up to whitespace) of an earlier doc."""
    minhash: bool = True
    """Drop near-duplicates found by MinHash LSH, keeping the first doc of each cluster."""
    n_grams: int = Field(5, ge=1)
    """Words per shingle (FineWeb: 5)."""
    num_buckets: int = Field(14, ge=1)
    """LSH bands (FineWeb: 14)."""
    hashes_per_bucket: int = Field(8, ge=1)
    """MinHash values per band (FineWeb: 8); candidates share all of them in at least one band."""
    seed: int = 1
    """Seed of the hash functions' parameters (datatrove: 1)."""


def normalize(text: str) -> str:
    """datatrove's `simplify_text`: lowercase, collapse whitespace, drop punctuation and diacritics,
    digits -> 0."""
    text = _SPACES.sub(" ", text.lower().strip()).translate(_PUNCTUATION)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return _DIGITS.sub("0", text).strip()


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.sha1(data.encode("utf-8")).digest()[:8], "little")


class MinHasher:
    """Signature of a text: `num_buckets * hashes_per_bucket` minima (uint64)."""

    def __init__(self, cfg: Dedup):
        self.cfg = cfg
        rng = np.random.RandomState(cfg.seed)
        size = (1, cfg.num_buckets * cfg.hashes_per_bucket)
        self.a = rng.randint(1, MERSENNE, dtype=np.uint64, size=size)
        self.b = rng.randint(0, MERSENNE, dtype=np.uint64, size=size)

    def shingles(self, text: str) -> np.ndarray:
        """(S, 1) uint64 hashes of the distinct word n-grams (a doc shorter than n is one shingle)."""
        words = normalize(text).split()
        n = self.cfg.n_grams
        grams = {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}
        return np.fromiter((_hash64(g) for g in grams), dtype=np.uint64, count=len(grams)).reshape(-1, 1)

    def signature(self, text: str) -> np.ndarray:
        with np.errstate(over="ignore"):  # the product wraps at 2^64, as in datatrove
            # (num_buckets * per_bucket,)
            return ((self.shingles(text) * self.a + self.b) % MERSENNE).min(axis=0)

    def bucket_keys(self, text: str) -> np.ndarray:
        """(num_buckets,) uint64: one 64-bit digest of each band's minima."""
        bands = self.signature(text).reshape(self.cfg.num_buckets, self.cfg.hashes_per_bucket)
        return np.array([int.from_bytes(hashlib.blake2b(band.tobytes(), digest_size=8).digest(), "little")
                         for band in bands], dtype=np.uint64)


class DedupIndex:
    """Docs are added in order; exact copies are refused at once, near-duplicates found at the end."""

    def __init__(self, cfg: Dedup):
        self.cfg = cfg
        self.hasher = MinHasher(cfg)
        self.exact: set[bytes] = set()
        self.keys: list[np.ndarray] = []  # one (num_buckets,) row per added doc

    def add(self, text: str) -> bool:
        """Record a doc; False (and not recorded) when it exactly repeats an earlier one."""
        if self.cfg.exact:
            digest = hashlib.sha1(_SPACES.sub(" ", text.strip()).encode("utf-8")).digest()
            if digest in self.exact:
                return False
            self.exact.add(digest)
        if self.cfg.minhash:
            self.keys.append(self.hasher.bucket_keys(text))
        return True

    def near_duplicates(self) -> set[int]:
        """Positions (among the docs `add` accepted) that are near-duplicates of an earlier doc."""
        if not self.cfg.minhash or len(self.keys) < 2:
            return set()
        keys = np.stack(self.keys)  # (N, num_buckets)
        parent = np.arange(len(keys))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for band in keys.T:
            order = np.argsort(band, kind="stable")
            same = np.flatnonzero(band[order][1:] == band[order][:-1])  # order[k] and order[k+1] collide
            for k in same:
                a, b = find(order[k]), find(order[k + 1])
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the root is the cluster's first doc
        return {i for i in range(len(keys)) if find(i) != i}
