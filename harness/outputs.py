"""Where a process's output goes, at the file-descriptor level: `output_to(path)` sends descriptors 1 and 2 to a
file, so that library warnings, C extensions and the processes started meanwhile (whose output is inherited) follow
sys.stdout and sys.stderr there."""

from __future__ import annotations

import contextlib
import os
import sys


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


@contextlib.contextmanager
def output_to(path):
    _flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        _flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)
