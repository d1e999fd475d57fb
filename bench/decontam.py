"""Decontamination benchmark, both stages, on the same eval items and the same texts, in the same run.

Exact stage: the harness's n-gram index (numpy, sorted uint64 hashes) against a textbook reference (a Python set of
n-gram tuples). Fuzzy stage: the harness's k-gram keys and bit-vector alignment against what a user would reach for
- datasketch's MinHash LSH over the questions' word 3-gram shingles, its candidates confirmed by the same alignment -
on lightly edited eval items (one edit each: case, a word replaced, neighbours swapped, options lettered, the answer
phrased) and on the prose texts (throughput, and flags on prose that no eval item is about).

    python bench/decontam.py [--items 100000] [--words 2000000] [--edited 2000]

Eval items: every split of the offline suite (train splits too, to pass 100,000 items), built with
`harness run recipes/quickstart.yaml --only suite`. Texts checked: the SOTU corpus (its first --words words).
Prints build time, peak memory (RSS growth) and words checked per second on one core, for both, and the ratios
harness / reference (speed: higher is better; memory: lower is better). The two must flag the same documents.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.filters import decontam, fuzzy  # noqa: E402
from harness.filters.text import words  # noqa: E402
from quickstart_suite import suite_dir  # noqa: E402


def reference_build(docs: list[dict], n: int, n_min: int) -> tuple[dict[int, set], list[int]]:
    grams: dict[int, set] = {}
    for doc in docs:
        for seq in decontam.eval_sequences(doc):
            w = words(seq)
            k = decontam.n_for(len(w), n, n_min)
            if k:
                grams.setdefault(k, set()).update(tuple(w[i:i + k]) for i in range(len(w) - k + 1))
    return grams, sorted(grams)


def reference_hits(grams: dict[int, set], text: str) -> bool:
    w = words(text)
    return any(tuple(w[i:i + k]) in g for k, g in grams.items() for i in range(len(w) - k + 1))


def rss() -> int:
    return psutil.Process().memory_info().rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--words", type=int, default=2_000_000)
    ap.add_argument("--edited", type=int, default=2000)
    a = ap.parse_args()
    data = suite_dir() / "data"
    docs = []
    for f in sorted(data.glob("*/*.jsonl")):
        docs += [{**json.loads(l), "task": f.parent.name, "split": f.stem} for l in f.read_text().splitlines()]
    docs = docs[: a.items]
    texts, total = [], 0
    for line in (ROOT / ".cache" / "assets" / "sotu.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        # documents of about 300 words, as web pages or synthetic items would be
        ws = text.split()
        for i in range(0, len(ws), 300):
            texts.append(" ".join(ws[i:i + 300]))
            total += len(ws[i:i + 300])
        if total >= a.words:
            break
    print(f"{len(docs):,} eval items; checking {len(texts):,} texts, {total:,} words; one process", flush=True)

    r0 = rss()
    t0 = time.perf_counter()
    index = decontam.build(docs, [], 13, 8, 10 ** 9)
    h_build, h_mem = time.perf_counter() - t0, rss() - r0
    ck = decontam.Checker(index)
    t0 = time.perf_counter()
    h_flags = []
    for i in range(0, len(texts), 2048):  # as the stages do: batches of texts
        h_flags += [bool(m) for m in ck.matches_each(texts[i:i + 2048])]
    h_rate = total / (time.perf_counter() - t0)
    del ck

    r0 = rss()
    t0 = time.perf_counter()
    grams, _ = reference_build(docs, 13, 8)
    r_build, r_mem = time.perf_counter() - t0, rss() - r0
    t0 = time.perf_counter()
    r_flags = [reference_hits(grams, t) for t in texts]
    r_rate = total / (time.perf_counter() - t0)

    assert h_flags == r_flags, "harness and reference disagree"
    mb = 2 ** 20
    print(f"  harness:   build {h_build:.1f} s, index memory {h_mem / mb:.0f} MiB, check {h_rate:,.0f} words/s")
    print(f"  reference: build {r_build:.1f} s, index memory {r_mem / mb:.0f} MiB, check {r_rate:,.0f} words/s")
    print(f"decontamination over {len(docs):,} eval items: check speed ratio {h_rate / r_rate:.2f}, build speed "
          f"ratio {r_build / h_build:.2f}, memory ratio {h_mem / max(1, r_mem):.2f}; {sum(h_flags)} of "
          f"{len(texts)} texts flagged by both")
    fuzzy_stage(docs, texts, total, a.edited)


def edited_items(docs: list[dict], n: int) -> tuple[list[dict], list[int]]:
    """n eval items with one light edit each, and the eval item each restates."""
    rng = random.Random(0)
    out, want = [], []
    for i in rng.sample(range(len(docs)), n):
        d = docs[i]
        q, choices = d["query"].replace("Question:", "").replace("\nAnswer:", "").strip(), list(d["choices"])
        gold = choices[int(d["gold"])]
        answer, w = gold, q.split()
        kind = rng.choice(["case", "word", "swap", "options", "phrased"])
        if kind == "case":
            q = q.upper().replace("?", "") + " ;"
        elif kind == "word":
            w[rng.randrange(len(w))] = "zebra"
            q = " ".join(w)
        elif kind == "swap" and len(w) > 1:
            j = rng.randrange(len(w) - 1)
            w[j], w[j + 1] = w[j + 1], w[j]
            q = " ".join(w)
        elif kind == "options":
            rng.shuffle(choices)
            q += " " + " ".join(f"({'ABCDEFGH'[k]}) {c}" for k, c in enumerate(choices))
            answer, choices = f"{'ABCDEFGH'[choices.index(gold)]}. {gold}", []
        elif kind == "phrased":
            answer = f"The answer is {gold}."
        out.append(fuzzy.item_text(q, choices, answer))
        want.append(i)
    return out, want


def minhash_reference(docs: list[dict], checker: fuzzy.FuzzyChecker, num_perm: int = 64):
    """datasketch MinHash LSH over each eval question's word 3-gram shingles (Jaccard threshold 0.5, the loosest
    that its banding makes selective), candidates confirmed by the harness's alignment and answer check."""
    from datasketch import MinHash, MinHashLSH

    def shingles(ws: list[str]) -> list[bytes]:
        return [" ".join(ws[i:i + 3]).encode() for i in range(max(1, len(ws) - 2))]

    lsh = MinHashLSH(threshold=0.5, num_perm=num_perm)
    qs = [words(fuzzy.question_of(d)) for d in docs]
    for i, mh in enumerate(MinHash.bulk([shingles(q) for q in qs], num_perm=num_perm)):
        lsh.insert(i, mh, check_duplication=False)

    def check(text: str) -> set[int]:
        w = words(text)
        hits = set()
        for e in lsh.query(MinHash.bulk([shingles(w)], num_perm=num_perm)[0]):
            if checker._confirm(checker.index.evals, w, e, 0, len(w)) is not None:
                hits.add(e)
        return hits

    return check


def fuzzy_stage(docs: list[dict], texts: list[str], total: int, n_edited: int) -> None:
    items, want = edited_items([d for d in docs if d.get("choices")], n_edited)
    with_choices = [d for d in docs if d.get("choices")]
    mb = 2 ** 20
    r0 = rss()
    t0 = time.perf_counter()
    fx = fuzzy.build(with_choices, [])
    h_build, h_mem = time.perf_counter() - t0, rss() - r0
    ck = fuzzy.FuzzyChecker(fx)
    t0 = time.perf_counter()
    h_hits = []
    for i in range(0, len(items), 1024):
        h_hits += ck.matches_each(items[i:i + 1024])
    h_rate = len(items) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    prose = []
    for i in range(0, len(texts), 1024):
        prose += ck.matches_each(texts[i:i + 1024])
    p_rate = total / (time.perf_counter() - t0)
    h_recall = sum(w in h for w, h in zip(want, h_hits)) / len(items)

    r0 = rss()
    t0 = time.perf_counter()
    ref = minhash_reference(with_choices, ck)
    r_build, r_mem = time.perf_counter() - t0, rss() - r0
    t0 = time.perf_counter()
    r_hits = [ref(t) for t in items]
    r_rate = len(items) / (time.perf_counter() - t0)
    r_recall = sum(w in h for w, h in zip(want, r_hits)) / len(items)
    print(f"fuzzy stage over {len(with_choices):,} eval items; {len(items):,} lightly edited items:")
    print(f"  harness:         build {h_build:.1f} s, index memory {h_mem / mb:.0f} MiB, {h_rate:,.0f} items/s, "
          f"recall {h_recall:.1%}; prose {p_rate:,.0f} words/s, {sum(map(bool, prose))} of {len(texts)} texts "
          f"flagged")
    print(f"  MinHash LSH ref: build {r_build:.1f} s, index memory {r_mem / mb:.0f} MiB, {r_rate:,.0f} items/s, "
          f"recall {r_recall:.1%}")
    print(f"fuzzy decontamination: check speed ratio {h_rate / r_rate:.2f}, build speed ratio {r_build / h_build:.2f}, "
          f"memory ratio {h_mem / max(1, r_mem):.2f}, recall {h_recall:.1%} vs {r_recall:.1%}")


if __name__ == "__main__":
    main()
