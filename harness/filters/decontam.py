"""Decontamination: an n-gram index over every eval split of a suite, and the check of any text against it.

An eval item is indexed as two word sequences - question followed by all its choices, and question followed by
its gold answer - so n-grams that span question, choices and answer count. Its n is min(N, max(N_min, L // 2))
for a sequence of L normalised words: long items get the standard N-gram (13), and a one-word edit of a short
item still leaves a whole n-gram intact; sequences shorter than N_min are matched whole (if at least 5 words).
Two kinds of n-gram are left out, and counted: those found in the TRAIN splits of the suite's tasks (training
data the recipe may use; an item that shares them is not eval contamination), and those shared by many eval items
(templates such as "which of the following best describes", not content).

A second, fuzzy stage (harness/filters/fuzzy.py) catches lightly edited eval items that no n-gram matches: texts
the exact stage passes are checked there, and what it flags is dropped (synthetic items) or reported (corpora) the
same way, marked "fuzzy" with its similarity.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.filters import fuzzy
from harness.filters.text import WordHasher, member, ngram_hashes, words

MIN_WHOLE = 5


def eval_sequences(doc: dict) -> list[str]:
    """Question with all choices and question with the gold answer; a generative item (no choices): question with
    its reference answer."""
    q, choices = doc["query"], doc.get("choices") or []
    out = [q + " " + " ".join(choices)]
    if choices:
        out.append(q + " " + choices[int(doc["gold"])])
    elif doc.get("answer"):
        out.append(q + " " + str(doc["answer"]))
    return out


def item_sequences(item: dict) -> list[str]:
    """A synthetic item's word sequences, laid out like the eval items' (plus its passage, if any)."""
    q = item["question"]
    if item.get("context"):
        q = f"{item['context']} {q}"
    choices = item.get("choices") or []
    out = [q + " " + " ".join(choices)] if choices else []
    out.append(q + " " + str(item.get("answer_text", "")))
    if item.get("explanation"):
        out.append(item["explanation"])
    return out


def n_for(length: int, n: int, n_min: int) -> int | None:
    if length >= n_min:
        return min(n, max(n_min, length // 2))
    return length if length >= MIN_WHOLE else None


@dataclass
class Index:
    hashes: np.ndarray  # sorted uint64
    item_of: np.ndarray  # int32, parallel to hashes
    items: list[dict]  # {id, task, split, text}
    ns: list[int]  # n values in use
    stats: dict
    fuzzy: fuzzy.FuzzyIndex | None = None  # the second stage, over the same items (None: off)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "hashes.npy", self.hashes)
        np.save(folder / "item_of.npy", self.item_of)
        (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in self.items))
        (folder / "index.json").write_text(json.dumps({"ns": self.ns, "stats": self.stats}, indent=1))
        if self.fuzzy is not None:
            self.fuzzy.save(folder / "fuzzy")

    @staticmethod
    def load(folder: Path) -> "Index":
        meta = json.loads((folder / "index.json").read_text())
        items = [json.loads(l) for l in (folder / "items.jsonl").read_text().splitlines()]
        fx = fuzzy.FuzzyIndex.load(folder / "fuzzy") if (folder / "fuzzy").is_dir() else None
        return Index(np.load(folder / "hashes.npy"), np.load(folder / "item_of.npy"), items, meta["ns"],
                     meta["stats"], fx)


def build(eval_docs: list[dict], train_docs: list[dict], n: int = 13, n_min: int = 8,
          max_item_freq: int = 10, fuzzy_params: dict | None = None) -> Index:
    """eval_docs: {id, task, split, query, choices, gold}; train_docs: the same shape (their n-grams are allowed).
    fuzzy_params ({ngram, threshold, max_item_freq}) builds the fuzzy stage's index too."""
    wh = WordHasher()
    hs, owners, ns = [], [], set()
    unindexed = 0
    items = []
    for i, doc in enumerate(eval_docs):
        items.append({"id": doc["id"], "task": doc["task"], "split": doc["split"],
                      "text": eval_sequences(doc)[-1][:300]})
        grams = []
        for seq in eval_sequences(doc):
            w = wh(words(seq))
            k = n_for(len(w), n, n_min)
            if k is not None:
                grams.append(ngram_hashes(w, k))
                ns.add(k)
        if not grams:
            unindexed += 1
            continue
        h = np.unique(np.concatenate(grams))  # one entry per (n-gram, item)
        hs.append(h)
        owners.append(np.full(len(h), i, dtype=np.int32))
    hashes = np.concatenate(hs) if hs else np.empty(0, np.uint64)
    item_of = np.concatenate(owners) if owners else np.empty(0, np.int32)
    uniq, counts = np.unique(hashes, return_counts=True)
    common = uniq[counts >= max_item_freq]  # n-grams shared by many eval items are templates
    # n-grams of the training splits are allowed. All train sequences are hashed as one stream: an n-gram that
    # spans two documents is noise that can only (with negligible probability) remove an index entry.
    stream = wh([x for doc in train_docs for seq in eval_sequences(doc) for x in words(seq)])
    in_train = np.zeros(len(uniq), dtype=bool)
    for k in sorted(ns):
        in_train |= member(uniq, np.sort(ngram_hashes(stream, k)))
    del stream
    drop_h = np.union1d(common, uniq[in_train])
    drop = member(hashes, drop_h)
    kept_h, kept_i = hashes[~drop], item_of[~drop]
    total = len(uniq)
    stats = {"eval_items": len(eval_docs), "unindexed_items": unindexed, "ngrams": total,
             "ngrams_kept": int(total - len(drop_h)), "ngrams_in_train_splits": int(in_train.sum()),
             "ngrams_shared_by_many_items": int(len(common)), "train_docs": len(train_docs),
             "n": n, "n_min": n_min, "max_item_freq": max_item_freq,
             "items_per_task": dict(collections.Counter(d["task"] for d in eval_docs))}
    order = np.argsort(kept_h, kind="stable")
    fx = fuzzy.build(eval_docs, train_docs, **fuzzy_params) if fuzzy_params is not None else None
    if fx is not None:
        stats["fuzzy"] = fx.stats
    return Index(kept_h[order], kept_i[order], items, sorted(ns), stats, fx)


class Checker:
    """Matches texts against an index; memoises word hashes across calls."""

    def __init__(self, index: Index):
        self.index = index
        self.wh = WordHasher()

    def matches(self, texts: list[str]) -> dict[int, str]:
        """eval item index -> the first matching n-gram (as words), over all of `texts` together."""
        out: dict[int, str] = {}
        for hits in self.matches_each(texts):
            for i, g in hits.items():
                out.setdefault(i, g)
        return out

    def matches_each(self, texts: list[str]) -> list[dict[int, str]]:
        """Per text: eval item index -> the first matching n-gram. The texts are hashed as one stream (one numpy
        pass and one sorted lookup per n for the whole batch); n-grams spanning two texts are masked out."""
        idx = self.index
        ws = [words(t) for t in texts]
        out: list[dict[int, str]] = [{} for _ in texts]
        if not len(idx.hashes) or not texts:
            return out
        lens = np.fromiter((len(w) for w in ws), dtype=np.int64, count=len(ws))
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        doc_of = np.repeat(np.arange(len(texts)), lens)
        stream = self.wh([x for w in ws for x in w])
        for k in idx.ns:
            h = ngram_hashes(stream, k)
            if not len(h):
                continue
            ok = doc_of[: len(h)] == doc_of[k - 1:]  # inside one text
            # sorted needles: numpy's binary search then starts from the previous answer (several times faster
            # than random order on a large index)
            order = np.argsort(h)
            lo = np.empty(len(h), dtype=np.int64)
            lo[order] = np.searchsorted(idx.hashes, h[order], "left")
            found = idx.hashes[np.minimum(lo, len(idx.hashes) - 1)] == h
            for pos in np.nonzero(found & ok)[0]:
                d = int(doc_of[pos])
                j = int(lo[pos])
                while j < len(idx.hashes) and idx.hashes[j] == h[pos]:
                    p0 = int(pos - starts[d])
                    out[d].setdefault(int(idx.item_of[j]), " ".join(ws[d][p0:p0 + k]))
                    j += 1
        return out


class ItemCheck:
    """check_items over a stream: batches of items in, clean and dropped items out, one report at the end."""

    def __init__(self, index: Index, examples: int = 3):
        self.index, self.ck, self.examples = index, Checker(index), examples
        self.fz = fuzzy.FuzzyChecker(index.fuzzy) if index.fuzzy is not None else None
        self.report: dict[str, dict] = {}
        self.by = collections.Counter()  # dropped items per stage: ngram, fuzzy

    def batch(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        clean, dropped = [], []
        seqs = [(n, seq) for n, it in enumerate(items) for seq in item_sequences(it)]
        per_item: list[dict[int, str]] = [{} for _ in items]
        for i in range(0, len(seqs), 1024):
            chunk = seqs[i:i + 1024]
            for (n, _), hits in zip(chunk, self.ck.matches_each([q for _, q in chunk])):
                for e, g in hits.items():
                    per_item[n].setdefault(e, g)
        how = ["ngram" if hits else None for hits in per_item]
        if self.fz is not None:  # what no n-gram matches goes to the fuzzy stage
            rest = [n for n, hits in enumerate(per_item) if not hits]
            texts = [fuzzy.item_text(items[n]["question"], items[n].get("choices"), items[n].get("answer_text"),
                                     items[n].get("context"), items[n].get("explanation")) for n in rest]
            for n, hits in zip(rest, self.fz.matches_each(texts)):
                if hits:
                    per_item[n] = {e: _fuzzy_match(sim, stretch) for e, (sim, stretch) in hits.items()}
                    how[n] = "fuzzy"
        for it, hits, by in zip(items, per_item, how):
            if not hits:
                clean.append(it)
                continue
            self.by[by] += 1
            dropped.append({**it, "contaminates": sorted({self.index.items[i]["id"] for i in hits}), "matched_by": by})
            _note(self.report, self.index, hits, "item", it["item_id"], self.examples)
        return clean, dropped

    def finish(self) -> dict:
        return _finish(self.report)


def check_items(index: Index, items: list[dict], examples: int = 3) -> tuple[list[dict], list[dict], dict]:
    """(clean items, dropped items, report per eval task: matched items, drops, examples)."""
    check = ItemCheck(index, examples)
    clean, dropped = check.batch(items)
    return clean, dropped, check.finish()


def check_documents(index: Index, docs, examples: int = 3) -> dict:
    """Report-only check of a corpus: per eval task, the eval items some document matches."""
    ck = Checker(index)
    fz = fuzzy.FuzzyChecker(index.fuzzy) if index.fuzzy is not None else None
    report: dict[str, dict] = {}
    n_docs = n_words = 0
    by = collections.Counter()  # documents matched per stage

    def flush(batch: list[str], first: int) -> None:
        exact = ck.matches_each(batch)
        near = fz.matches_each(batch) if fz is not None else [{} for _ in batch]
        for d, (hits, fhits) in enumerate(zip(exact, near), start=first):
            fhits = {e: _fuzzy_match(*h) for e, h in fhits.items() if e not in hits}
            by.update([s for s, h in (("ngram", hits), ("fuzzy", fhits)) if h])
            _note(report, index, {**hits, **fhits}, "document", d, examples)

    batch: list[str] = []
    batch_chars = 0
    for text in docs:
        batch.append(text)
        n_docs += 1
        n_words += len(text.split())
        batch_chars += len(text)
        if batch_chars >= 4_000_000:  # larger batches make the sorted lookups denser, hence faster
            flush(batch, n_docs - len(batch))
            batch, batch_chars = [], 0
    flush(batch, n_docs - len(batch))
    out = _finish(report)
    for r in out.values():
        r["documents"] = r.pop("dropped")
    return {"documents": n_docs, "words": n_words, "per_task": out, "matched_by": dict(by)}


def _fuzzy_match(sim: float, stretch: str) -> str:
    """How a fuzzy match is shown where an exact one shows its n-gram."""
    return f"~{sim:.2f}: {stretch[:160]}"


def _note(report: dict, index: Index, hits: dict[int, str], what: str, who, examples: int) -> None:
    """Record that `who` (an item id or a document number) matches the eval items in `hits`."""
    for i, gram in hits.items():
        e = index.items[i]
        r = report.setdefault(e["task"], {"matched_eval_items": set(), "dropped": set(), "examples": []})
        r["matched_eval_items"].add(e["id"])
        r["dropped"].add(who)
        if len(r["examples"]) < examples:
            r["examples"].append({what: who, "eval_item": e["id"], "ngram": gram, "eval_text": e["text"][:200]})


def _finish(report: dict) -> dict:
    """Counts per eval task, the examples, and the matched eval items' ids (the report counts those it evaluated)."""
    return {t: {"matched_eval_items": len(r["matched_eval_items"]), "dropped": len(r["dropped"]),
                "examples": r["examples"], "eval_items": sorted(r["matched_eval_items"])}
            for t, r in sorted(report.items())}


DETAIL = ("examples", "eval_items")  # kept in the stage's contamination.json, left out of its manifest
