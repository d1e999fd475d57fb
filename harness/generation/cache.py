"""A request cache: completions keyed by a hash of (model identity, messages, sampling parameters, seed), in one
SQLite file of the run store. A rerun - after a crash, a kill, or with more samples - asks the server only for
what it has not answered; every result is committed as it arrives (WAL, synchronous=NORMAL: a fraction of a
millisecond each), so a SIGKILL loses nothing that was answered.

WAL needs memory shared by every process that opens the file, so it works only among processes of one host. On a
network filesystem (a cluster's shared store, where generation shards on several nodes write one cache) the cache
uses a rollback journal instead, which relies on the filesystem's POSIX locks (NFSv4, Lustre with flock, GPFS)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from harness.generation.backends import Completion, Request


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


class RequestCache:
    def __init__(self, path: Path, model_id: str, journal: str | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.journal = journal or ("delete" if filesystem_type(path.parent) in NETWORK_FS else "wal")
        self.db = sqlite3.connect(path, timeout=600)
        self.db.execute(f"PRAGMA journal_mode={self.journal.upper()}")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS completions (h TEXT PRIMARY KEY, text TEXT, prompt_tokens INT, "
                        "completion_tokens INT, finish TEXT, created REAL)")
        self.model_id = model_id

    def get(self, r: Request) -> Completion | None:
        row = self.db.execute("SELECT text, prompt_tokens, completion_tokens, finish FROM completions WHERE h=?",
                              (request_hash(self.model_id, r),)).fetchone()
        return Completion(*row) if row else None

    def put(self, r: Request, c: Completion) -> None:
        if c.error:  # refusals are not cached: a fixed server or prompt may answer next time
            return
        self.db.execute("INSERT OR REPLACE INTO completions VALUES (?,?,?,?,?,?)",
                        (request_hash(self.model_id, r), c.text, c.prompt_tokens, c.completion_tokens,
                         c.finish_reason, time.time()))
        self.db.commit()

    def close(self) -> None:
        self.db.close()
