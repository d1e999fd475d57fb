"""How a running stage tells the console where it is: `report(...)` writes the latest figures (what, done, total,
rate, unit, a short text) as one JSON file that the local executor polls.

The file is named by $HARNESS_PROGRESS, which the executor sets for each stage; it is inherited by the processes a
stage starts (training ranks), so rank 0 of a training run reports too. Without it (Slurm, a test calling a stage)
`report` does nothing. Writes are atomic (a rename) and at most a few a second: a hot loop may call it every step.
"""

from __future__ import annotations

import json
import os
import time

ENV = "HARNESS_PROGRESS"
MIN_INTERVAL = 0.5  # seconds between writes; the console redraws a few times a second at most

_last = [0.0]


def report(what: str, done: float, total: float | None = None, *, rate: float | None = None, unit: str = "",
           text: str = "", force: bool = False) -> None:
    """The running stage's progress: `done` of `total` `what` (e.g. 12 of 73 steps), `rate` `unit`/s, and `text`
    for what the numbers do not say (a loss)."""
    path = os.environ.get(ENV)
    if not path:
        return
    now = time.monotonic()
    if not force and now - _last[0] < MIN_INTERVAL and (total is None or done < total):
        return
    _last[0] = now
    record = {"what": what, "done": done, "total": total, "rate": rate, "unit": unit, "text": text,
              "time": time.time()}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)
    except OSError:  # the console is a convenience: a full disk or a removed folder must not fail the stage
        pass


def read(path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
