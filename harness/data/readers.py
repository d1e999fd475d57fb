"""Streaming corpus readers: JSONL (plain or gzip), Parquet, folders of plain text.

A corpus is cut into shards - byte ranges of plain JSONL aligned to line starts, whole compressed or Parquet files,
groups of text files - so that tokenization can run in parallel, resume shard by shard, and hold only one batch
of documents in memory. The shards' documents, concatenated in shard order, are the corpus in file order whatever
the shard size. A malformed record is skipped and counted with its file and line.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz")
MAX_EXAMPLES = 20  # malformed records kept as examples in a report; all are counted


def file_format(path: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    name = path.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


@dataclass(frozen=True)
class Shard:
    """A part of a corpus: files[i] read from byte `start` to `end` (jsonl), or whole files (others)."""

    files: tuple[str, ...]
    format: str
    start: int = 0
    end: int = -1  # -1: to the end of the file

    @property
    def nbytes(self) -> int:
        if self.end >= 0:
            return self.end - self.start
        return sum(os.path.getsize(f) for f in self.files)

    def to_dict(self) -> dict:
        return {"files": list(self.files), "format": self.format, "start": self.start, "end": self.end}

    @staticmethod
    def from_dict(d: dict) -> "Shard":
        return Shard(tuple(d["files"]), d["format"], d["start"], d["end"])


def plan_shards(files: list[str], declared_format: str, shard_bytes: int) -> list[Shard]:
    shards: list[Shard] = []
    text_group: list[str] = []
    text_bytes = 0
    for path in files:
        fmt = file_format(path, declared_format)
        size = os.path.getsize(path)
        if fmt == "text":
            text_group.append(path)
            text_bytes += size
            if text_bytes >= shard_bytes:
                shards.append(Shard(tuple(text_group), "text"))
                text_group, text_bytes = [], 0
            continue
        if text_group:  # keep file order: close the pending text group first
            shards.append(Shard(tuple(text_group), "text"))
            text_group, text_bytes = [], 0
        if fmt == "jsonl" and not path.endswith(".gz") and size > shard_bytes:
            for start in range(0, size, shard_bytes):
                shards.append(Shard((path,), fmt, start, min(start + shard_bytes, size)))
        else:
            shards.append(Shard((path,), fmt))
    if text_group:
        shards.append(Shard(tuple(text_group), "text"))
    return shards


@dataclass
class ReadStats:
    documents: int = 0
    empty: int = 0
    malformed: int = 0
    bytes_read: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def bad(self, path: str, line: int, reason: str) -> None:
        self.malformed += 1
        key = reason.split(":")[0]
        self.reasons[key] = self.reasons.get(key, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"file": path, "line": line, "reason": reason})

    def add(self, other: "ReadStats") -> None:
        self.documents += other.documents
        self.empty += other.empty
        self.malformed += other.malformed
        self.bytes_read += other.bytes_read
        for k, v in other.reasons.items():
            self.reasons[k] = self.reasons.get(k, 0) + v
        self.examples.extend(other.examples[: max(0, MAX_EXAMPLES - len(self.examples))])

    def to_dict(self) -> dict:
        return {"documents": self.documents, "empty": self.empty, "malformed": self.malformed,
                "bytes_read": self.bytes_read, "malformed_by_reason": self.reasons, "malformed_examples": self.examples}


def _line_number_at(path: str, offset: int) -> int:
    """1-based line number of the line that starts at `offset` (counted only when a bad record needs it)."""
    n = 1
    with open(path, "rb") as f:
        remaining = offset
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 22))
            if not chunk:
                break
            n += chunk.count(b"\n")
            remaining -= len(chunk)
    return n


def _record_text(line: bytes, text_field: str) -> tuple[str | None, str]:
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"invalid json: {e}"
    if not isinstance(rec, dict):
        return None, f"not an object: {type(rec).__name__}"
    if text_field not in rec:
        return None, f"missing field: '{text_field}'"
    text = rec[text_field]
    if not isinstance(text, str):
        return None, f"wrong type: '{text_field}' is {type(text).__name__}, not a string"
    return text, ""


def _read_jsonl(shard: Shard, text_field: str, stats: ReadStats) -> Iterator[str]:
    path = shard.files[0]
    gz = path.endswith(".gz")
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        pos, first_line = 0, 1
        if shard.start > 0:
            # a shard owns the lines that START inside [start, end): skip the line that began before it
            f.seek(shard.start - 1)
            pos = shard.start - 1 + len(f.readline())
            first_line = None  # found lazily, only if a record is bad
        end = shard.end if shard.end >= 0 else float("inf")
        i = 0
        while pos < end:
            line = f.readline()
            if not line:
                break
            line_start = pos
            pos += len(line)
            stats.bytes_read = pos - shard.start if not gz else pos
            i += 1
            if not line.strip():
                continue
            text, why = _record_text(line, text_field)
            if text is None:
                if first_line is None:
                    first_line = _line_number_at(path, line_start) - (i - 1)
                stats.bad(path, first_line + i - 1, why)
                continue
            if not text.strip():
                stats.empty += 1
                continue
            stats.documents += 1
            yield text


def _read_parquet(shard: Shard, text_field: str, stats: ReadStats) -> Iterator[str]:
    import pyarrow.parquet as pq

    path = shard.files[0]
    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        stats.bad(path, 0, f"missing field: '{text_field}' is not a column (columns: {pf.schema_arrow.names})")
        return
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str):
                if text is None:
                    stats.empty += 1
                else:
                    stats.bad(path, row, f"wrong type: '{text_field}' is {type(text).__name__}")
                continue
            if not text.strip():
                stats.empty += 1
                continue
            stats.documents += 1
            yield text
    stats.bytes_read = os.path.getsize(path)


def _read_text(shard: Shard, text_field: str, stats: ReadStats) -> Iterator[str]:
    for path in shard.files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            stats.bad(path, 0, f"not utf-8: {e}")
            continue
        stats.bytes_read += os.path.getsize(path)
        if not text.strip():
            stats.empty += 1
            continue
        stats.documents += 1
        yield text


READERS = {"jsonl": _read_jsonl, "parquet": _read_parquet, "text": _read_text}


def read_shard(shard: Shard, text_field: str, stats: ReadStats) -> Iterator[str]:
    """The documents of a shard, in order; malformed and empty records are counted in `stats`."""
    return READERS[shard.format](shard, text_field, stats)


def read_corpus(files: list[str], declared_format: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    for shard in plan_shards(files, declared_format, shard_bytes=2**62):
        yield from read_shard(shard, text_field, stats)


def expand_paths(patterns: list[str]) -> list[str]:
    """Files matched by a list of files, globs and folders, sorted within each pattern (a stable order)."""
    out: list[str] = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            out.extend(sorted(p for p in glob.glob(pat, recursive=True) if os.path.isfile(p)))
        elif os.path.isdir(pat):
            out.extend(sorted(str(p) for p in Path(pat).rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif os.path.isfile(pat):
            out.append(pat)
    return out
