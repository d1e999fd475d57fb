"""The run store: content-addressed stage outputs, atomic publication, manifests, locks.

Layout under the store root (default `runs/`):
    _stages/<kind>/<hash>/            a published stage output; manifest.json is written before the rename
    _stages/<kind>/<hash>.partial/    work in progress (kept across crashes, so a rerun resumes from its shards)
    _stages/<kind>/<hash>.lock        held while a process works on the stage
    _stages/fingerprints.json         content hashes of input files, keyed by (path, size, mtime, inode)
    <experiment>/recipe.yaml, plan.json, stages -> the published outputs this experiment uses
Stage outputs are shared across arms and experiments: the hash covers everything the output depends on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator


class StageLocked(RuntimeError):
    pass


def fsync_tree(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    # ---- stage outputs
    def stage_dir(self, kind: str, digest: str) -> Path:
        return self.root / "_stages" / kind / digest

    def partial_dir(self, kind: str, digest: str) -> Path:
        return self.root / "_stages" / kind / f"{digest}.partial"

    def is_published(self, kind: str, digest: str) -> bool:
        return (self.stage_dir(kind, digest) / "manifest.json").is_file()

    def manifest(self, kind: str, digest: str) -> dict:
        return json.loads((self.stage_dir(kind, digest) / "manifest.json").read_text())

    @contextlib.contextmanager
    def lock(self, kind: str, digest: str, what: str) -> Iterator[None]:
        """An exclusive, non-blocking lock on one stage output; the holder's pid and host are written in it."""
        path = self.root / "_stages" / kind / f"{digest}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise StageLocked(f"stage {what} is being run by {holder} ({path})") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}")
            f.flush()
            yield
        finally:
            f.close()

    def publish(self, partial: Path, final: Path, manifest: dict) -> None:
        """Make a finished stage visible in one rename, after its files and manifest are on disk."""
        write_json_atomic(partial / "manifest.json", manifest)
        fsync_tree(partial)
        if final.exists():  # a stale, unpublished leftover (no manifest): replace it
            shutil.rmtree(final)
        os.rename(partial, final)
        _fsync_dir(final.parent)

    # ---- experiments
    def experiment_dir(self, name: str) -> Path:
        return self.root / name

    def experiments(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("_")
                      and (p / "plan.json").is_file())

    # ---- input fingerprints
    def fingerprint(self, paths: list[str]) -> list[str]:
        """Content hashes of files, cached by (path, size, mtime, inode) so that large corpora are read once."""
        cache_path = self.root / "_stages" / "fingerprints.json"
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
        out, changed = [], False
        for p in paths:
            st = os.stat(p)
            key = f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
            if key not in cache:
                cache[key] = file_digest(p)
                changed = True
            out.append(cache[key])
        if changed:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache_path, cache)
        return out


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def environment() -> dict:
    """Versions and host recorded in every manifest."""
    from importlib import metadata

    import harness

    versions = {"python": sys.version.split()[0], "harness": harness.__version__}
    for pkg in ("torch", "megatron-core", "lm-eval", "tokenizers", "transformers", "numpy", "omegaconf"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"versions": versions, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
