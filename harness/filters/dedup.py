"""Exact and near-duplicate removal, within a synthetic set and against its seeds.

Exact: the same normalised words. Near: MinHash LSH (datasketch) over word 3-gram shingles, Jaccard >= threshold.
Seeds are indexed first, so an output that copies (or barely edits) its seed is dropped as `copies_seed`; among
synthetic items the first in item-id order stays."""

from __future__ import annotations

import collections
import hashlib

from datasketch import MinHash, MinHashLSH

from harness.filters.text import words

NUM_PERM = 64


def item_text(item: dict) -> str:
    parts = [item.get("context") or "", item["question"], " ".join(item.get("choices") or []),
             str(item.get("answer_text", ""))]
    return " ".join(p for p in parts if p)


def _minhash(ws: list[str]) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, seed=1)
    shingles = {" ".join(ws[i:i + 3]).encode() for i in range(max(1, len(ws) - 2))}
    m.update_batch(list(shingles))
    return m


def dedup(items: list[dict], seeds: list[dict], threshold: float = 0.7) -> tuple[list[dict], collections.Counter]:
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    exact: dict[str, str] = {}
    for s in seeds:
        ws = words(item_text(s))
        key = f"seed:{s['seed_id']}"
        exact.setdefault(hashlib.sha1(" ".join(ws).encode()).hexdigest(), key)
        if key not in lsh:
            lsh.insert(key, _minhash(ws))
    kept, dropped = [], collections.Counter()
    for it in sorted(items, key=lambda x: x["item_id"]):
        ws = words(item_text(it))
        h = hashlib.sha1(" ".join(ws).encode()).hexdigest()
        if h in exact:
            dropped["copies_seed" if exact[h].startswith("seed:") else "exact_duplicate"] += 1
            continue
        m = _minhash(ws)
        near = lsh.query(m)
        if near:
            dropped["copies_seed" if any(k.startswith("seed:") for k in near) else "near_duplicate"] += 1
            continue
        exact[h] = it["item_id"]
        lsh.insert(f"item:{it['item_id']}", m)
        kept.append(it)
    return kept, dropped
