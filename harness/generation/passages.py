"""Passages sampled from a base corpus: the grounding of the "with context" variant and the input of the unseeded
control. Documents are cut at paragraph breaks into passages of a bounded number of words; a seeded reservoir
sample keeps memory flat whatever the corpus size."""

from __future__ import annotations

import random
import re
from typing import Iterable, Iterator

from harness.data.readers import ReadStats, read_corpus


def split_passages(text: str, min_words: int, max_words: int) -> Iterator[str]:
    buf: list[str] = []
    for para in re.split(r"\n\s*\n|\n", text):
        words = para.split()
        while words:
            room = max_words - len(buf)
            buf += words[:room]
            words = words[room:]
            if len(buf) >= max_words:
                yield " ".join(buf)
                buf = []
        if len(buf) >= min_words:
            yield " ".join(buf)
            buf = []
    if len(buf) >= min_words:
        yield " ".join(buf)


def sample(docs: Iterable[str], n: int, seed: int, min_words: int = 80, max_words: int = 200) -> list[dict]:
    """n passages as {passage_id, text}, ids by position in the corpus (stable for a given corpus)."""
    rng = random.Random(seed)
    keep: list[dict] = []
    seen = 0
    for d, doc in enumerate(docs):
        for p, text in enumerate(split_passages(doc, min_words, max_words)):
            item = {"passage_id": f"doc{d}.p{p}", "text": text}
            if len(keep) < n:
                keep.append(item)
            else:
                j = rng.randrange(seen + 1)
                if j < n:
                    keep[j] = item
            seen += 1
    return keep


def from_corpus(files: list[str], fmt: str, text_field: str, n: int, seed: int) -> tuple[list[dict], ReadStats]:
    stats = ReadStats()
    return sample(read_corpus(files, fmt, text_field, stats), n, seed), stats
