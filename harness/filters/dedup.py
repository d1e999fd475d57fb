"""Exact and near-duplicate removal, within a synthetic set and against its seeds.

Exact: the same normalised words. Near: MinHash LSH over word 3-gram shingles, Jaccard >= threshold, with
datasketch's MinHash and its banding (b bands of r values for the threshold): two texts are near duplicates when
one band of their signatures is equal. Seeds are indexed first, so an output that copies (or barely edits) its
seed is dropped as `copies_seed`; among synthetic items the first in item-id order stays.

Bounded memory at millions of items: items stream through in item-id order and are written as they are kept;
what is remembered of a kept item (and of a seed) is nine 64-bit keys - the hash of its words and one hash per
band - in sorted numpy runs merged as they grow (8M items: about 0.6 GB), not the item nor a MinHash object. Two
different bands hash to the same key with probability 2^-64 per pair (at 8M items, about 1e-4 false drops in all)."""

from __future__ import annotations

import collections
import hashlib
from typing import Callable, Iterable, Iterator

import numpy as np
from datasketch import MinHash, MinHashLSH

from harness.filters.text import words

NUM_PERM = 64
BATCH = 2048  # items looked up together (vectorised over the sorted runs)


def item_text(item: dict) -> str:
    parts = [item.get("context") or "", item["question"], " ".join(item.get("choices") or []),
             str(item.get("answer_text", ""))]
    return " ".join(p for p in parts if p)


class KeySet:
    """A growing set of uint64 keys: sorted runs, the newest merged into the previous while it is at least half its
    size (a logarithmic number of runs; each key is copied a logarithmic number of times)."""

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def add(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        self.runs.append(np.sort(keys.astype(np.uint64, copy=False)))
        while len(self.runs) > 1 and len(self.runs[-1]) * 2 >= len(self.runs[-2]):
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]))

    def contains(self, keys: np.ndarray) -> np.ndarray:
        hit = np.zeros(keys.shape, dtype=bool)
        for run in self.runs:
            pos = np.searchsorted(run, keys)
            hit |= run[np.minimum(pos, len(run) - 1)] == keys
        return hit

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.runs)


def _key(data: bytes, tag: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=tag).digest(), "little")


class Signer:
    """(exact key, band keys) of a text's words; MinHash permutations made once, not per item."""

    def __init__(self, threshold: float):
        lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        self.ranges = lsh.hashranges
        first = MinHash(num_perm=NUM_PERM, seed=1)
        self.perms, self.scheme = first.permutations, first.scheme

    def minhash(self, ws: list[str]) -> MinHash:
        m = MinHash(num_perm=NUM_PERM, seed=1, permutations=self.perms, scheme=self.scheme)
        m.update_batch(list({" ".join(ws[i:i + 3]).encode() for i in range(max(1, len(ws) - 2))}))
        return m

    def keys(self, ws: list[str]) -> tuple[int, list[int]]:
        exact = _key(" ".join(ws).encode(), b"exact")
        hv = self.minhash(ws).hashvalues
        # datasketch's band key is the bytes of the band's values; the band's index keeps bands apart
        return exact, [_key(hv[a:b].byteswap().tobytes(), b"band%d" % i) for i, (a, b) in enumerate(self.ranges)]


class Deduplicator:
    def __init__(self, seeds: Iterable[dict], threshold: float = 0.7):
        self.signer = Signer(threshold)
        exact, bands = [], []
        for s in seeds:
            e, b = self.signer.keys(words(item_text(s)))
            exact.append(e)
            bands.extend(b)
        self.seed_exact, self.seed_bands = KeySet(), KeySet()
        self.seed_exact.add(np.array(exact, dtype=np.uint64))
        self.seed_bands.add(np.array(bands, dtype=np.uint64))
        self.exact, self.bands = KeySet(), KeySet()  # of kept items
        self.dropped: collections.Counter = collections.Counter()

    def batch(self, items: list[dict]) -> list[dict]:
        """The items of `items` (in item-id order, after every earlier batch) that are kept."""
        if not items:
            return []
        sig = [self.signer.keys(words(item_text(it))) for it in items]
        exact = np.array([e for e, _ in sig], dtype=np.uint64)
        bands = np.array([b for _, b in sig], dtype=np.uint64)
        seed_exact, seed_band = self.seed_exact.contains(exact), self.seed_bands.contains(bands).any(axis=1)
        old_exact, old_band = self.exact.contains(exact), self.bands.contains(bands).any(axis=1)
        new_exact: set[int] = set()
        new_bands: set[int] = set()
        kept, kept_rows = [], []
        for n, it in enumerate(items):
            e, b = sig[n]
            if seed_exact[n] or old_exact[n] or e in new_exact:
                self.dropped["copies_seed" if seed_exact[n] else "exact_duplicate"] += 1
            elif seed_band[n] or old_band[n] or not new_bands.isdisjoint(b):
                self.dropped["copies_seed" if seed_band[n] else "near_duplicate"] += 1
            else:
                new_exact.add(e)
                new_bands.update(b)
                kept.append(it)
                kept_rows.append(n)
        self.exact.add(exact[kept_rows])
        self.bands.add(bands[kept_rows].ravel())
        return kept

    @property
    def nbytes(self) -> int:
        return self.seed_exact.nbytes + self.seed_bands.nbytes + self.exact.nbytes + self.bands.nbytes


def batched(items: Iterable[dict], size: int = BATCH) -> Iterator[list[dict]]:
    buf: list[dict] = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def in_item_order(items: Iterable[dict], where: Callable[[], str] = lambda: "items") -> Iterator[dict]:
    """`items`, checked to come in strictly increasing item-id order (what streaming dedup relies on)."""
    last = None
    for it in items:
        if last is not None and it["item_id"] <= last:
            raise ValueError(f"{where()}: items are not in item-id order ('{it['item_id']}' after '{last}')")
        last = it["item_id"]
        yield it


def dedup(items: list[dict], seeds: list[dict], threshold: float = 0.7) -> tuple[list[dict], collections.Counter]:
    """In-memory convenience: the kept items (item-id order) and the drop counts."""
    d = Deduplicator(seeds, threshold)
    kept = [k for b in batched(sorted(items, key=lambda x: x["item_id"])) for k in d.batch(b)]
    return kept, d.dropped
