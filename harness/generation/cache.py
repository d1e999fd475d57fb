"""A request cache: completions keyed by a hash of (model identity, messages, sampling parameters, seed), in one
SQLite file of the run store. A rerun - after a crash, a kill, or with more samples - asks the server only for
what it has not answered; every result is committed as it arrives (WAL, synchronous=NORMAL: a fraction of a
millisecond each), so a SIGKILL loses nothing that was answered."""

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


class RequestCache:
    def __init__(self, path: Path, model_id: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
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
