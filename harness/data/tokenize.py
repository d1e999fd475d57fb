"""Tokenization of a corpus into Megatron's .bin/.idx: sharded, parallel across processes, resumable, memory bounded.

Each shard is encoded in batches (`encode_batch_fast`, which runs on the tokenizer's own thread pool and skips the
offsets nobody needs here), written to its own .bin/.idx, and marked done by a stats file written last. A rerun
skips finished shards, so a killed run resumes; the final merge concatenates shards in order, so the output is
byte-identical whatever the number of workers, the shard size or the interruptions.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from harness import progress
from harness.data import indexed
from harness.data.readers import ReadStats, Shard, read_shard
from harness.data.tokenizer import load as load_tokenizer

BATCH_BYTES = 1 << 20  # text per encode call: large enough to keep every thread busy, small enough to bound memory


@dataclass(frozen=True)
class TokenizeJob:
    tokenizer_json: str
    eod_id: int
    vocab_size: int
    text_field: str
    workdir: str  # shards are written under workdir/shards

    def shard_prefix(self, i: int) -> str:
        return os.path.join(self.workdir, "shards", f"{i:05d}")


def _flatten(encodings, eod: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    ids = [e.ids for e in encodings]
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter(chain.from_iterable(chain(x, (eod,)) for x in ids), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def _batches(texts, batch_bytes: int, stats: ReadStats):
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= batch_bytes:
            yield batch, stats.bytes_read
            batch, size = [], 0
    if batch:
        yield batch, stats.bytes_read


def tokenize_shard(job: TokenizeJob, index: int, shard: Shard, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Tokenize one shard into shards/<index>.bin/.idx; returns (and writes last, as the marker) its stats.

    Encoding runs on a helper thread (the tokenizer releases the GIL) while this thread parses the next batch and
    writes the previous one: the cores stay busy with encoding, and at most two batches are held in memory.
    """
    marker = Path(job.shard_prefix(index) + ".json")
    if marker.is_file():
        return json.loads(marker.read_text())
    marker.parent.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(job.tokenizer_json)
    writer = indexed.BinWriter(job.shard_prefix(index), indexed.token_dtype(job.vocab_size))
    stats = ReadStats()
    tokens, reported = 0, 0
    pending: deque = deque()

    def drain_one() -> None:
        nonlocal tokens, reported
        future, read_upto = pending.popleft()
        flat, lengths = _flatten(future.result(), job.eod_id, writer.dtype)
        writer.write_batch(flat, lengths)
        tokens += len(flat)
        if progress:
            progress(read_upto - reported, len(flat))
            reported = read_upto

    with ThreadPoolExecutor(1) as encoder:
        for batch, read_upto in _batches(read_shard(shard, job.text_field, stats), BATCH_BYTES, stats):
            pending.append((encoder.submit(tok.encode_batch_fast, batch, add_special_tokens=False), read_upto))
            if len(pending) >= 2:
                drain_one()
        while pending:
            drain_one()
    writer.close()
    result = {"index": index, "tokens": tokens, **stats.to_dict()}
    tmp = marker.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, marker)
    return result


# ------------------------------------------------------------------------------------ running many shards

_progress_queue = None


def _worker_init(queue, threads: int) -> None:
    global _progress_queue
    _progress_queue = queue
    os.environ["RAYON_NUM_THREADS"] = str(threads)


def _worker(args) -> dict:
    job, index, shard_dict = args
    q = _progress_queue
    return tokenize_shard(job, index, Shard.from_dict(shard_dict), (lambda b, t: q.put((b, t))) if q else None)


def run_shards(job: TokenizeJob, shards: list[Shard], indices: list[int], workers: int, threads: int,
               progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Tokenize the shards with the given indices. One worker runs in this process on `threads` threads; more
    run in spawned processes (the tokenizer's thread pool must not be forked) with threads // workers each."""
    todo = [i for i in indices if not Path(job.shard_prefix(i) + ".json").is_file()]
    if workers <= 1 or len(todo) <= 1:
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        for i in todo:
            tokenize_shard(job, i, shards[i], progress)
    else:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        per = max(1, threads // workers)
        with ctx.Pool(min(workers, len(todo)), initializer=_worker_init, initargs=(queue, per)) as pool:
            pending = pool.map_async(_worker, [(job, i, shards[i].to_dict()) for i in todo], chunksize=1)
            while not pending.ready() or not queue.empty():
                try:
                    b, t = queue.get(timeout=0.2)
                    if progress:
                        progress(b, t)
                except Exception:
                    pass
            pending.get()  # re-raises a worker's error
    return [json.loads(Path(job.shard_prefix(i) + ".json").read_text()) for i in indices]


def finalize(job: TokenizeJob, n_shards: int, out_prefix: str | os.PathLike) -> dict:
    """Merge the shards in order into out_prefix.bin/.idx and sum their stats; the shards are removed."""
    stats = ReadStats()
    tokens = 0
    for i in range(n_shards):
        marker = Path(job.shard_prefix(i) + ".json")
        if not marker.is_file():
            raise RuntimeError(f"shard {i} of {n_shards} is not finished ({marker} missing)")
        s = json.loads(marker.read_text())
        tokens += s["tokens"]
        part = ReadStats(s["documents"], s["empty"], s["malformed"], s["bytes_read"], s["malformed_by_reason"],
                         s["malformed_examples"])
        stats.add(part)
    lengths = indexed.merge([job.shard_prefix(i) for i in range(n_shards)], out_prefix)
    assert int(lengths.sum()) == tokens, "merged token count disagrees with the shards' counts"
    for i in range(n_shards):
        for ext in (".bin", ".idx", ".json"):
            Path(job.shard_prefix(i) + ext).unlink(missing_ok=True)
    shard_dir = Path(job.workdir, "shards")
    if shard_dir.is_dir() and not any(shard_dir.iterdir()):
        shard_dir.rmdir()
    return {"tokens": tokens, "dtype": np.dtype(indexed.token_dtype(job.vocab_size)).name, **stats.to_dict()}


def tokenize_files(files: list[str], fmt: str, text_field: str, tokenizer_json: str, tok_info: dict, workdir: str,
                   out_prefix: str | os.PathLike, workers: int, threads: int, shard_bytes: int, label: str,
                   log=None) -> tuple[dict, "Progress"]:
    """Shard, tokenize (resuming finished shards in `workdir`) and merge into out_prefix.bin/.idx, with a
    progress bar; returns the merged stats and the bar (its counts are this run's)."""
    from harness.data.readers import plan_shards

    shards = plan_shards(files, fmt, shard_bytes)
    job = TokenizeJob(tokenizer_json, tok_info["eod_id"], tok_info["vocab_size"], text_field, workdir)
    if log:
        log(f"tokenizing {len(files)} files ({sum(s.nbytes for s in shards):,} bytes) in {len(shards)} shards "
            f"with {workers} worker(s)")
    bar = Progress(sum(s.nbytes for s in shards), label, log)
    try:
        run_shards(job, shards, list(range(len(shards))), workers, threads or cpu_count(), bar)
    finally:
        bar.close()
    return finalize(job, len(shards), out_prefix), bar


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Progress:
    """A rich progress bar over input bytes with tokens/s, or plain log lines when not on a terminal."""

    def __init__(self, total_bytes: int, description: str, log=None):
        import sys

        self.total, self.done_bytes, self.tokens = total_bytes, 0, 0
        self.t0 = time.perf_counter()
        self.log = log
        self.live = sys.stderr.isatty()
        self._last_log = self.t0
        if self.live:
            from rich.progress import BarColumn, DownloadColumn, Progress as RP, TextColumn, TimeRemainingColumn

            self._p = RP(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                         TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn(), transient=False)
            self._task = self._p.add_task(description, total=total_bytes, tps="-")
            self._p.start()

    def __call__(self, nbytes: int, ntokens: int) -> None:
        self.done_bytes += nbytes
        self.tokens += ntokens
        rate = self.tokens / max(1e-9, time.perf_counter() - self.t0)
        progress.report("MB", self.done_bytes / 1e6, self.total / 1e6, rate=rate, unit="tokens")
        if self.live:
            self._p.update(self._task, completed=self.done_bytes, tps=f"{rate:,.0f}")
        elif self.log and time.perf_counter() - self._last_log > 10:
            self._last_log = time.perf_counter()
            self.log(f"{self.done_bytes / max(1, self.total):.0%} of {self.total:,} bytes, {self.tokens:,} tokens, "
                     f"{rate:,.0f} tokens/s")

    def close(self) -> None:
        if self.live:
            self._p.stop()
