"""A machine-level cache of deterministic builds that every run store repeats: the offline suite's data (read from
the benchmark wheels) and the decontamination index over it. Each is keyed by what it is built from - its stage's
digest - and by the source of the code that builds it, so a change of either builds anew; it is published by one
rename, and linked (else copied) into the stage's work folder, which the store then publishes as usual.

HARNESS_BUILD_CACHE moves it (default .cache/builds in the checkout); an empty value turns it off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def _base() -> Path | None:
    env = os.environ.get("HARNESS_BUILD_CACHE")
    if env == "":
        return None
    return Path(env) if env else ROOT / ".cache" / "builds"


def key(digest: str, *modules) -> str:
    """The stage's digest and the source of the modules that build it."""
    h = hashlib.sha256(digest.encode())
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()[:24]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fetch_or_build(name: str, cache_key: str, dest: Path, build: Callable[[Path], None]) -> bool:
    """Fill `dest` (which must not exist) from the cache, or by `build(dest)` and then into the cache. True when it
    came from the cache."""
    base = _base()
    cached = base / name / cache_key if base else None
    if cached is not None and cached.is_dir():
        shutil.copytree(cached, dest, copy_function=_link_or_copy)
        return True
    build(dest)
    if cached is not None:
        tmp = cached.with_name(f".{cache_key}.{os.getpid()}.tmp")
        try:
            shutil.copytree(dest, tmp, copy_function=_link_or_copy)
            os.replace(tmp, cached)  # another process may have published it first: either copy is the same
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return False
