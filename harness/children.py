"""Child processes that end with the process that started them. A managed server, a training launched by its stage
and the warm worker each run in a process of their own (some in a session of their own, so that a signal meant for
the stage reaches them only when forwarded); when their parent dies without a chance to stop them - SIGKILL, the OOM
killer, a closed terminal - the kernel sends them SIGTERM instead of leaving them running unowned (a training that
kept writing the stage's partial folder while a rerun starts on it)."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1

try:  # looked up here, not in the forked child: a child must not import (another thread may hold the import lock)
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:  # not Linux
    _prctl = None


def die_with_parent() -> None:
    """A `preexec_fn` for subprocess.Popen (Linux; elsewhere nothing): SIGTERM when the parent dies. The parent is
    the thread that started the child, so call Popen from a thread that lives as long as the child should."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
