"""Fuzzy decontamination: the stage after exact n-gram matching, for lightly edited eval items (case and punctuation,
a word replaced, neighbours swapped, options reordered or lettered, the answer phrased in a sentence).

Candidates: an eval item's normalised question is keyed by its word k-grams (k = 3; keys shared by many eval items
are templates and find nothing); a text sharing at least `need` of an item's keys is a candidate for that item.
Confirmation: the question aligned against the text - the fewest word edits (insert, delete, replace) that turn it
into some stretch of the text, by Myers' bit-vector algorithm - gives the similarity 1 - edits / question words,
which must reach the threshold; and the item's gold answer (its normalised words, contiguous) must appear near that
stretch, so that a question quoted without its answer, or a question whose answer differs, is not a copy.
The nearest item decides: the TRAIN splits are keyed the same way, and a text that matches an eval item is flagged
only when it is closer to it than to every train item it matches, so that an item resembling its own TRAIN seed
(training data the recipe may use) is not eval contamination, even where an eval item resembles that seed too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.filters.text import WordHasher, contains, ngram_hashes, words

MIN_QUESTION = 3  # shorter questions are left to the exact stage (too little text to tell an edit from a new item)
WINDOW = 256  # texts are checked in windows of this many words, half overlapping: a long document's scattered
# hits on an item's keys would otherwise make one candidate whose region is the whole document
ANSWER_AFTER = 100  # words after the matched question searched for the answer (options, a lettered key, a sentence)


def question_of(doc: dict) -> str:
    return doc["query"]


def answer_of(doc: dict) -> str:
    choices = doc.get("choices")
    if choices:
        return str(choices[int(doc["gold"])])
    return str(doc.get("answer") or "")


def align(pattern: list[str], text: list[str]) -> tuple[int, int]:
    """(fewest word edits turning `pattern` into a stretch of `text`, where the best stretch ends): semi-global edit
    distance, one bit per pattern word (Myers 1999), so a candidate costs one pass over its region of the text."""
    m = len(pattern)
    if not m:
        return 0, 0
    peq: dict[str, int] = {}
    for i, w in enumerate(pattern):
        peq[w] = peq.get(w, 0) | (1 << i)
    mask, high = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = mask, 0, m
    best, end = m, 0
    for j, w in enumerate(text):
        eq = peq.get(w, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = (ph << 1) & mask  # a 0 shifted in: the stretch may start anywhere in the text
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
        if score < best:
            best, end = score, j + 1
    return best, end


@dataclass
class Bank:
    """Items keyed for candidate search: sorted k-gram hashes of their questions, the item owning each, and per item
    the shared keys that make a text a candidate, its question and gold answer (normalised words)."""

    keys: np.ndarray  # sorted uint64
    owner: np.ndarray  # int32, parallel to keys
    need: np.ndarray  # int32 per item (0: not keyed)
    questions: list[list[str]]
    answers: list[list[str]]

    def save(self, folder: Path, name: str) -> None:
        for part in ("keys", "owner", "need"):
            np.save(folder / f"{name}.{part}.npy", getattr(self, part))
        with open(folder / f"{name}.items.jsonl", "w") as f:
            for q, a in zip(self.questions, self.answers):
                f.write(json.dumps([" ".join(q), " ".join(a)]) + "\n")

    @staticmethod
    def load(folder: Path, name: str) -> "Bank":
        qs, ans = [], []
        with open(folder / f"{name}.items.jsonl") as f:
            for line in f:
                q, a = json.loads(line)
                qs.append(q.split())
                ans.append(a.split())
        return Bank(*(np.load(folder / f"{name}.{part}.npy") for part in ("keys", "owner", "need")), qs, ans)

    @staticmethod
    def build(docs: list[dict], wh: WordHasher, ngram: int, threshold: float, max_item_freq: int) -> "Bank":
        questions = [words(question_of(d)) for d in docs]
        answers = [words(answer_of(d)) for d in docs]
        hs, owners = [], []
        for i, q in enumerate(questions):
            if len(q) >= max(MIN_QUESTION, ngram):
                h = np.unique(ngram_hashes(wh(q), ngram))
                hs.append(h)
                owners.append(np.full(len(h), i, dtype=np.int32))
        keys = np.concatenate(hs) if hs else np.empty(0, np.uint64)
        owner = np.concatenate(owners) if owners else np.empty(0, np.int32)
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        common = counts[inverse] >= max_item_freq  # templates, not content
        keys, owner = keys[~common], owner[~common]
        order = np.argsort(keys, kind="stable")
        n_keys = np.bincount(owner, minlength=len(docs))
        # keys a text must share to be a candidate: d word edits remove at most k * d of an item's distinct keys,
        # so a stretch within the threshold's edits of the question keeps at least n_keys - k * edits of them
        m = np.fromiter((len(q) for q in questions), dtype=np.int64, count=len(questions))
        allowed = np.floor((1 - threshold) * m + 1e-9).astype(np.int64)
        need = np.where(n_keys > 0, np.maximum(1, n_keys - ngram * allowed), 0).astype(np.int32)
        return Bank(keys[order], owner[order], need, questions, answers)

    def stats(self) -> dict:
        return {"items": len(self.need), "keyed": int((self.need > 0).sum()), "keys": int(len(self.keys))}


@dataclass
class FuzzyIndex:
    evals: Bank  # numbered as the exact index's items
    train: Bank
    params: dict = field(default_factory=dict)  # ngram, threshold, max_item_freq
    stats: dict = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.evals.save(folder, "eval")
        self.train.save(folder, "train")
        (folder / "fuzzy.json").write_text(json.dumps({"params": self.params, "stats": self.stats}))

    @staticmethod
    def load(folder: Path) -> "FuzzyIndex":
        meta = json.loads((folder / "fuzzy.json").read_text())
        return FuzzyIndex(Bank.load(folder, "eval"), Bank.load(folder, "train"), meta["params"], meta["stats"])


def build(eval_docs: list[dict], train_docs: list[dict], ngram: int = 3, threshold: float = 0.75,
          max_item_freq: int = 50) -> FuzzyIndex:
    wh = WordHasher()
    ev = Bank.build(eval_docs, wh, ngram, threshold, max_item_freq)
    tr = Bank.build(train_docs, wh, ngram, threshold, max_item_freq)
    params = {"ngram": ngram, "threshold": threshold, "max_item_freq": max_item_freq}
    return FuzzyIndex(ev, tr, params, {"eval": ev.stats(), "train": tr.stats(), **params})


def item_text(question: str, choices, answer: str, context: str | None = None, explanation: str | None = None) -> str:
    """One text per item for the fuzzy check: its passage, question, options, answer (and explanation)."""
    parts = [context or "", question, " ".join(str(c) for c in choices or []), str(answer or ""),
             explanation or ""]
    return "\n".join(p for p in parts if p)


class FuzzyChecker:
    """Matches texts against a fuzzy index; memoises word hashes across calls."""

    def __init__(self, index: FuzzyIndex):
        self.index = index
        self.wh = WordHasher()
        self.k = index.params["ngram"]
        self.threshold = index.params["threshold"]

    def matches_each(self, texts: list[str]) -> list[dict[int, tuple[float, str]]]:
        """Per text: eval item number -> (similarity, the matched stretch of the text), for the eval items it is
        closer to than to any train item."""
        owner, ws = [], []  # windows: (the text's words, where the window starts)
        for n, t in enumerate(texts):
            w = words(t)
            for a in range(0, max(1, len(w) - WINDOW // 2), WINDOW // 2):
                owner.append(n)
                ws.append((w, a))
        hits = self._match(self.index.evals, ws)
        matched = [i for i, h in enumerate(hits) if h]
        for i, th in zip(matched, self._match(self.index.train, [ws[i] for i in matched])):
            nearest_train = max((s for s, _ in th.values()), default=0.0)
            hits[i] = {e: h for e, h in hits[i].items() if h[0] > nearest_train}
        out: list[dict[int, tuple[float, str]]] = [{} for _ in texts]
        for n, h in zip(owner, hits):
            for e, hit in h.items():
                if e not in out[n] or hit[0] > out[n][e][0]:
                    out[n][e] = hit
        return out

    def _match(self, bank: Bank, ws: list[tuple[list[str], int]]) -> list[dict[int, tuple[float, str]]]:
        """Candidates are found within a window; they are confirmed on the whole text around them (a question
        longer than the window is still aligned whole)."""
        k = self.k
        out: list[dict[int, tuple[float, str]]] = [{} for _ in ws]
        if not len(bank.keys) or not ws:
            return out
        lens = np.fromiter((len(w[a:a + WINDOW]) for w, a in ws), dtype=np.int64, count=len(ws))
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        doc_of = np.repeat(np.arange(len(ws)), lens)
        h = ngram_hashes(self.wh([x for w, a in ws for x in w[a:a + WINDOW]]), k)
        if not len(h):
            return out
        ok = doc_of[: len(h)] == doc_of[k - 1:]
        order = np.argsort(h)
        lo = np.empty(len(h), dtype=np.int64)
        hi = np.empty(len(h), dtype=np.int64)
        lo[order] = np.searchsorted(bank.keys, h[order], "left")
        hi[order] = np.searchsorted(bank.keys, h[order], "right")
        pos = np.nonzero(ok & (hi > lo))[0]
        if not len(pos):
            return out
        reps = hi[pos] - lo[pos]
        key = np.repeat(lo[pos], reps) + np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        n_items = len(bank.need)
        gpos = np.repeat(pos, reps)
        pair = doc_of[gpos] * n_items + bank.owner[key].astype(np.int64)
        o = np.lexsort((gpos, key, pair))
        pair, key, gpos = pair[o], key[o], gpos[o]
        new_key = np.ones(len(pair), dtype=bool)  # the key's place in the index: one per (item, distinct k-gram)
        new_key[1:] = (pair[1:] != pair[:-1]) | (key[1:] != key[:-1])
        uniq, at = np.unique(pair, return_index=True)
        shared = np.add.reduceat(new_key, at)
        p_min, p_max = np.minimum.reduceat(gpos, at), np.maximum.reduceat(gpos, at)
        cand = shared >= bank.need[uniq % n_items]
        for pr, a, b in zip(uniq[cand], p_min[cand], p_max[cand]):
            d, e = divmod(int(pr), n_items)
            text, at = ws[d]
            hit = self._confirm(bank, text, e, int(a - starts[d]) + at, int(b - starts[d]) + k + at)
            if hit is not None:
                out[d][e] = hit
        return out

    def _confirm(self, bank: Bank, text: list[str], e: int, a: int, b: int) -> tuple[float, str] | None:
        q = bank.questions[e]
        m = len(q)
        lo = max(0, a - m)
        region = text[lo:b + m]
        seen = set(region)  # every question word missing from the region costs an edit: a cheap bound first
        if sum(w not in seen for w in q) > (1 - self.threshold) * m + 1e-9:
            return None
        dist, end = align(q, region)
        sim = 1 - dist / m
        if sim < self.threshold:
            return None
        s, t = lo + max(0, end - m - dist), lo + end
        if not contains(text[max(0, s - m):t + ANSWER_AFTER + len(bank.answers[e])], bank.answers[e]):
            return None
        return round(sim, 3), " ".join(text[s:t])
