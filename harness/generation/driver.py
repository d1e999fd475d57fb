"""Runs rounds of requests through the request cache and a backend, reporting progress (items/s, tokens/s).

The backend (and a managed server) is made only when some request is not cached, so a rerun of a finished or
nearly finished stage starts nothing."""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import ExitStack
from typing import Callable

from harness import progress
from harness.generation.backends import Backend, Completion, Request
from harness.generation.cache import RequestCache


def request_seed(base: int, key: str) -> int:
    """A per-request sampling seed from the recipe's seed and the request key: independent of order and batching."""
    return int(hashlib.sha256(f"{base}:{key}".encode()).hexdigest()[:8], 16)


class Driver:
    def __init__(self, cache: RequestCache, make_backend: Callable[[ExitStack], Backend], log: logging.Logger):
        self.cache, self.make_backend, self.log = cache, make_backend, log
        self.stack = ExitStack()
        self.backend: Backend | None = None
        self.counts = {"requests": 0, "cached": 0, "generated": 0, "refused": 0, "prompt_tokens": 0,
                       "completion_tokens": 0, "seconds": 0.0}

    def close(self) -> None:
        """Stops the backend (and its managed server); safe to call again."""
        try:
            if self.backend is not None:
                self.backend.close()
        finally:
            self.backend = None
            self.stack.close()

    def commit_chunks(self, todo: list[Request]) -> list[list[Request]]:
        """`todo` in chunks of about the backend's `commit_every` requests (whole batches of a backend that samples
        per batch), each committed to the cache before the next starts: an engine that returns its answers only at
        the end of a call (vLLM offline) then loses one chunk to a preemption, not the stage's work."""
        size = getattr(self.backend, "commit_every", None)
        if not size:
            return [todo]
        batches = self.backend.chunks(todo) if hasattr(self.backend, "chunks") else [[r] for r in todo]
        out: list[list[Request]] = [[]]
        for b in batches:
            if len(out[-1]) >= size:
                out.append([])
            out[-1].extend(b)
        return [c for c in out if c]

    def run(self, label: str, requests: list[Request]) -> dict[str, Completion]:
        out: dict[str, Completion] = self.cache.get_many(requests)
        todo = [r for r in requests if r.key not in out]
        if todo and self.backend is None:
            self.backend = self.make_backend(self.stack)
        batches = getattr(self.backend, "chunks", None)
        if todo and batches is not None:  # samples depend on their batch: redo whole batches, as a fresh run made them
            missing = {r.key for r in todo}
            todo = [r for chunk in batches(requests) if any(r.key in missing for r in chunk) for r in chunk]
        self.counts["requests"] += len(requests)
        self.counts["cached"] += len(requests) - len(todo)
        self.log.info("%s: %d requests, %d cached, %d to generate", label, len(requests), len(requests) - len(todo),
                      len(todo))
        if not todo:
            return out
        t0, toks, last_log, n_done = time.perf_counter(), [0], [time.perf_counter()], [0]
        progress.report(label, 0, len(todo), unit="tokens", force=True)

        def done(r: Request, c: Completion) -> None:
            out[r.key] = c
            if c.error:
                self.counts["refused"] += 1
                self.log.warning("request %s refused: %s", r.key, c.error)
            self.cache.put(r, c)
            self.counts["prompt_tokens"] += c.prompt_tokens
            self.counts["completion_tokens"] += c.completion_tokens
            toks[0] += c.completion_tokens
            n_done[0] += 1
            dt = max(1e-9, time.perf_counter() - t0)
            n = n_done[0]
            progress.report(label, n, len(todo), rate=toks[0] / dt, unit="tokens", text=f"{n / dt:.2f} items/s")
            if time.perf_counter() - last_log[0] > 30:  # the log file gets the progress too
                last_log[0] = time.perf_counter()
                self.log.info("%s: %d/%d, %.2f items/s %.0f tok/s", label, n, len(todo), n / dt, toks[0] / dt)

        for chunk in self.commit_chunks(todo):
            self.backend.generate(chunk, done)
            self.cache.flush()  # a chunk's answers are on disk before the next chunk starts
        dt = time.perf_counter() - t0
        self.counts["generated"] += len(todo)
        self.counts["seconds"] += dt
        self.log.info("%s: generated %d in %.1f s (%.0f completion tokens/s)", label, len(todo), dt, toks[0] / dt)
        return out
