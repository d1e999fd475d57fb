"""Decontamination benchmark: the harness's n-gram index (numpy, sorted uint64 hashes) against a textbook
reference (a Python set of n-gram tuples) on the same eval items and the same texts, in the same run.

    python bench/decontam.py [--items 100000] [--words 2000000]

Eval items: every split of the offline suite (train splits too, to pass 100,000 items), built with
`harness run recipes/quickstart.yaml --only suite`. Texts checked: the SOTU corpus (its first --words words).
Prints build time, peak memory (RSS growth) and words checked per second on one core, for both, and the ratios
harness / reference (speed: higher is better; memory: lower is better). The two must flag the same documents.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.filters import decontam  # noqa: E402
from harness.filters.text import words  # noqa: E402


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
    a = ap.parse_args()
    subprocess.run([sys.executable, "-m", "harness", "run", str(ROOT / "recipes" / "quickstart.yaml"), "--only",
                    "suite"], check=True, capture_output=True)
    from harness.plan import Plan

    plan = Plan.load(ROOT / "runs" / "quickstart" / "plan.json")
    data = plan.dir(plan.by_id("suite")) / "suite" / "data"
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


if __name__ == "__main__":
    main()
