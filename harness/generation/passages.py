"""Passages sampled from a base corpus: the grounding of the "with context" variant and the input of the unseeded
control. Documents are cut at paragraph breaks into passages of a bounded number of words; a seeded reservoir
sample of the passages' JSON lines reads the corpus once (memory: the sample itself, not the corpus).

The sample is published once per synthetic set (stage `passages`) as passages.jsonl plus offsets.npy (the byte
offset of every line), so that a generation shard reads only the passages its own requests use."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

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


def sample_lines(docs: Iterable[str], n: int, seed: int, min_words: int = 80, max_words: int = 200) -> list[bytes]:
    """`sample`, holding each kept passage as its encoded JSON line (a third of the memory of a dict)."""
    rng = random.Random(seed)
    keep: list[bytes] = []
    seen = 0
    for d, doc in enumerate(docs):
        for p, text in enumerate(split_passages(doc, min_words, max_words)):
            if len(keep) < n:
                keep.append(json.dumps({"passage_id": f"doc{d}.p{p}", "text": text}).encode() + b"\n")
            else:
                j = rng.randrange(seen + 1)
                if j < n:
                    keep[j] = json.dumps({"passage_id": f"doc{d}.p{p}", "text": text}).encode() + b"\n"
            seen += 1
    return keep


def sample_corpus(files: list[str], fmt: str, text_field: str, n: int, seed: int) -> tuple[list[bytes], ReadStats]:
    stats = ReadStats()
    return sample_lines(read_corpus(files, fmt, text_field, stats), n, seed), stats


def needed(kind: str, configured: int | None, n_seeds: int, samples: int, context_share: float) -> int:
    """How many passages a set samples: the recipe's number, else what its requests use - one per unseeded passage
    request (200 by default), or one per grounded seeded request on average (seeds x samples x context_share)."""
    if configured is not None:
        return configured
    if kind == "unseeded_qa":
        return 200
    return max(1, math.ceil(n_seeds * samples * context_share))


def write(lines: list[bytes], folder: Path) -> int:
    """passages.jsonl, offsets.npy (uint64 line starts, plus the file's end) and ids.txt (the passage ids, one a
    line: what a shard needs to pick its own passages without parsing the others)."""
    offsets = np.zeros(len(lines) + 1, dtype=np.uint64)
    pos = 0
    with open(folder / "passages.jsonl", "wb") as f, open(folder / "ids.txt", "w") as ids:
        for i, line in enumerate(lines):
            f.write(line)
            pos += len(line)
            offsets[i + 1] = pos
            ids.write(json.loads(line)["passage_id"] + "\n")
    np.save(folder / "offsets.npy", offsets)
    return len(lines)


class PassageFile:
    """A published passage sample, read by index (a shard's picks) or streamed in order (the unseeded control)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / "passages.jsonl"
        self.offsets = np.load(Path(folder) / "offsets.npy")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get_many(self, indices: Iterable[int]) -> dict[int, dict]:
        """The passages at `indices`, read in file order (a few seeks, whatever the order asked)."""
        out: dict[int, dict] = {}
        with open(self.path, "rb") as f:
            for i in sorted(set(indices)):
                f.seek(int(self.offsets[i]))
                out[i] = json.loads(f.read(int(self.offsets[i + 1] - self.offsets[i])))
        return out

    def by_id(self, ids: Iterable[str]) -> dict[str, dict]:
        """The passages with these ids."""
        wanted = set(ids)
        return {p["passage_id"]: p for p in self.where(wanted.__contains__)}

    def where(self, keep: Callable[[str], bool]) -> Iterator[dict]:
        """The passages whose id `keep` accepts, in file order; only those are read and parsed."""
        with open(self.path.parent / "ids.txt") as f:
            wanted = [i for i, pid in enumerate(f.read().splitlines()) if keep(pid)]
        for start in range(0, len(wanted), 4096):  # bounded reads, file order
            got = self.get_many(wanted[start:start + 4096])
            yield from (got[i] for i in wanted[start:start + 4096])

    def __iter__(self) -> Iterator[dict]:
        with open(self.path, "rb") as f:
            for line in f:
                yield json.loads(line)
