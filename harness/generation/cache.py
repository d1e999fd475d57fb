"""A request cache: completions keyed by a hash of (model identity, messages, sampling parameters, seed), in SQLite
files of the run store's `_cache/requests/` folder - one per generation stage (each shard of a set has its own),
so that 64 GPU jobs never queue for one database lock. A rerun - after a crash, a kill, or with more samples - asks
the server only for what no file has answered: a stage reads its own file first, then the others (a sharded run
finds what an unsharded run answered, and the other way round; the shards of the same split are skipped, their
seeds are never ours; other sets' files are not read).

Answers are written by a thread of their own, committed every fraction of a second (or every few hundred
answers), so the asyncio loop that collects them never waits for the disk; a SIGKILL loses at most the last
window, which a rerun asks again. `flush()` returns once everything handed over is committed.

WAL needs memory shared by every process that opens the file, so it works only among processes of one host. On a
network filesystem (a cluster's shared store) the cache uses a rollback journal instead, which relies on the
filesystem's POSIX locks (NFSv4, Lustre with flock, GPFS)."""

from __future__ import annotations

import hashlib
import json
import queue
import re
import sqlite3
import threading
import time
from pathlib import Path

from harness.generation.backends import Completion, Request

COLUMNS = "h TEXT PRIMARY KEY, text TEXT, prompt_tokens INT, completion_tokens INT, finish TEXT, created REAL"
LOOKUP = 500  # hashes per SELECT ... IN (...)
_FLUSH = object()  # queued by flush(): commit what came before it now


def request_hash(model_id: str, r: Request) -> str:
    payload = [model_id, list(map(list, r.messages)), r.max_tokens, r.temperature, r.top_p, r.seed]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "fuse.glusterfs",
              "fuse.sshfs", "panfs", "wekafs", "9p"}


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path` (the longest mount point above it in /proc/mounts)."""
    target, best, kind = str(Path(path).resolve()), -1, "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:
            best, kind = len(mount), parts[2]
    return kind


_SHARD = re.compile(r"^(?P<set>.+)\.shard(?P<i>\d+)of(?P<n>\d+)\.sqlite$")


def set_of(name: str) -> str:
    """The synthetic set a cache file belongs to: `tsqa.shard3of32.sqlite` -> `tsqa`."""
    m = _SHARD.match(name)
    return m["set"] if m else name.removesuffix(".sqlite")


def disjoint(mine: str, other: str) -> bool:
    """True when `other` is another shard of the same split of the same set: its requests are never ours."""
    a, b = _SHARD.match(mine), _SHARD.match(other)
    return bool(a and b and a["set"] == b["set"] and a["n"] == b["n"] and a["i"] != b["i"])


def _connect(path: Path, journal: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=600)
    db.execute(f"PRAGMA journal_mode={journal.upper()}")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class RequestCache:
    def __init__(self, path: Path, model_id: str, journal: str | None = None, others: list[Path] = (),
                 window: float = 0.25, batch: int = 512):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.model_id, self.window, self.batch = path, model_id, window, batch
        self.journal = journal or ("delete" if filesystem_type(path.parent) in NETWORK_FS else "wal")
        self.db = _connect(path, self.journal)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS completions ({COLUMNS})")
        self.db.commit()
        self.others = [Path(p) for p in others if Path(p) != path and Path(p).is_file()]
        self._other_dbs: dict[Path, sqlite3.Connection] = {}
        self._pending: dict[str, tuple] = {}  # handed to the writer, not yet committed (readable meanwhile)
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self.found_elsewhere = 0
        self._writer = threading.Thread(target=self._write_loop, name="request-cache-writer", daemon=True)
        self._writer.start()

    @classmethod
    def for_stage(cls, folder: Path, name: str, model_id: str, legacy: Path | None = None,
                  journal: str | None = None) -> "RequestCache":
        """The stage's own file `<folder>/<name>.sqlite`, reading also the other files of the same set (another
        split, an unsharded run, another experiment's set of that name) and a store's single cache file of
        earlier versions (`legacy`), except the disjoint shards of the same split. Other sets' files are not
        read: their prompts differ, and 64 shards opening 64 files each would cost more than it finds."""
        folder = Path(folder)
        own = folder / f"{name}.sqlite"
        others = sorted(p for p in folder.glob("*.sqlite") if p != own and set_of(p.name) == set_of(own.name)
                        and not disjoint(own.name, p.name))
        if legacy is not None and Path(legacy).is_file():
            others.append(Path(legacy))
        return cls(own, model_id, journal, others)

    # ----------------------------------------------------------------------------------------- reading

    def get(self, r: Request) -> Completion | None:
        return self.get_many([r]).get(r.key)

    def get_many(self, requests: list[Request]) -> dict[str, Completion]:
        """Cached completions by request key: pending answers, this stage's file, then the other files."""
        want = {request_hash(self.model_id, r): r.key for r in requests}
        found: dict[str, tuple] = {}
        with self._lock:
            for h in want:
                if h in self._pending:
                    found[h] = self._pending[h][1:5]
        own = self._lookup(self.db, [h for h in want if h not in found])
        found.update(own)
        for p in self.others:
            missing = [h for h in want if h not in found]
            if not missing:
                break
            got = self._lookup(self._other(p), missing)
            self.found_elsewhere += len(got)
            found.update(got)
        return {want[h]: Completion(*row) for h, row in found.items()}

    def _other(self, p: Path) -> sqlite3.Connection:
        if p not in self._other_dbs:  # read only in practice: never written through this connection
            self._other_dbs[p] = sqlite3.connect(p, timeout=600)
        return self._other_dbs[p]

    @staticmethod
    def _lookup(db: sqlite3.Connection, hashes: list[str]) -> dict[str, tuple]:
        out = {}
        for i in range(0, len(hashes), LOOKUP):
            part = hashes[i:i + LOOKUP]
            try:
                rows = db.execute("SELECT h, text, prompt_tokens, completion_tokens, finish FROM completions WHERE h "
                                  f"IN ({','.join('?' * len(part))})", part).fetchall()
            except sqlite3.OperationalError as e:  # another stage's file that has no table yet
                if "no such table" in str(e):
                    return out
                raise
            out.update((row[0], row[1:]) for row in rows)
        return out

    # ----------------------------------------------------------------------------------------- writing

    def put(self, r: Request, c: Completion) -> None:
        """Hands an answer to the writer thread (never blocks on the disk)."""
        if self._error is not None:
            raise RuntimeError(f"request cache {self.path}: writing failed: {self._error}") from self._error
        if c.error:  # refusals are not cached: a fixed server or prompt may answer next time
            return
        row = (request_hash(self.model_id, r), c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason,
               time.time())
        with self._lock:
            self._pending[row[0]] = row
        self._queue.put(row)

    def flush(self) -> None:
        """Returns once every answer handed over so far is committed (the writer commits at once, not at the end
        of its window)."""
        self._queue.put(_FLUSH)
        self._queue.join()
        if self._error is not None:
            raise RuntimeError(f"request cache {self.path}: writing failed: {self._error}") from self._error

    def _write_loop(self) -> None:
        db = None
        while True:
            row = self._queue.get()
            if row is None or row is _FLUSH:
                self._queue.task_done()
                if row is None:
                    break
                continue
            rows, deadline = [row], time.monotonic() + self.window
            stop = markers = 0
            while len(rows) < self.batch:  # gather a window's worth, then one transaction
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None or nxt is _FLUSH:
                    markers += 1
                    stop = nxt is None
                    break
                rows.append(nxt)
            try:
                if self._error is None:
                    db = db or _connect(self.path, self.journal)
                    db.executemany("INSERT OR REPLACE INTO completions VALUES (?,?,?,?,?,?)", rows)
                    db.commit()
                    with self._lock:
                        for r in rows:
                            if self._pending.get(r[0]) is r:
                                del self._pending[r[0]]
            except BaseException as e:  # reported to the stage on its next put/flush/close
                self._error = e
            finally:
                for _ in range(len(rows) + markers):
                    self._queue.task_done()
            if stop:
                break
        if db is not None:
            db.close()

    def close(self) -> None:
        try:
            if self._writer.is_alive():
                self._queue.put(None)
                self._writer.join()
        finally:
            self.db.close()
            for db in self._other_dbs.values():
                db.close()
        if self._error is not None:
            raise RuntimeError(f"request cache {self.path}: writing failed: {self._error}") from self._error
