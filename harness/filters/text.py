"""Normalised words and their stable 64-bit hashes, shared by decontamination and deduplication."""

from __future__ import annotations

import hashlib
import re

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")
# labels of the Q&A layouts, not content: dropped so that a rendered item and a raw eval item align
FORMAT_WORDS = frozenset({"question", "answer", "passage", "context"})


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in FORMAT_WORDS]


class WordHasher:
    """Stable (process-independent) word hashes, memoised."""

    def __init__(self):
        self.memo: dict[str, int] = {}

    def __call__(self, ws: list[str]) -> np.ndarray:
        memo = self.memo
        for w in set(ws).difference(memo):
            memo[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        return np.fromiter((memo[w] for w in ws), dtype=np.uint64, count=len(ws))


def contains(seq: list[str], part: list[str]) -> bool:
    """`part` appears in `seq` as a contiguous run (an empty part always does)."""
    n = len(part)
    return not n or any(seq[i] == part[0] and seq[i:i + n] == part for i in range(len(seq) - n + 1))


_P = np.uint64(0x9E3779B97F4A7C15)
_N_SALT = np.uint64(0xC2B2AE3D27D4EB4F)


def ngram_hashes(wh: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every n-gram of a word-hash sequence (polynomial, wrapping uint64), salted by n."""
    m = len(wh) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _P + wh[j:j + m]
        return h ^ (np.uint64(n) * _N_SALT)


def member(a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    """a in b for a sorted b (np.isin is far slower on large uint64 arrays in this numpy)."""
    if not len(sorted_b):
        return np.zeros(len(a), dtype=bool)
    pos = np.searchsorted(sorted_b, a)
    return sorted_b[np.minimum(pos, len(sorted_b) - 1)] == a
