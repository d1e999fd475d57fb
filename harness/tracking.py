"""W&B runs for training, evaluation and the report, started one way.

Compute nodes often have no route to W&B. A run asked for `online` that cannot reach it within
`wandb.init_timeout` seconds (or has no API key there) is written offline instead, with a warning that says how to
upload it later (`wandb sync`); nothing that a stage computes or publishes depends on W&B being reachable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def init_run(cfg: dict | None, directory: Path, say: Callable[[str], None] = _warn, **run_args):
    """A started wandb run, or None when W&B is disabled. `run_args` go to wandb.init (group, name, job_type, ...)."""
    w = cfg or {}
    mode = w.get("mode", "disabled")
    if mode == "disabled":
        return None
    import wandb

    args = {"project": w.get("project", "task-seeded"), "dir": str(directory), "reinit": "finish_previous",
            **run_args}
    if mode == "online":
        try:
            return wandb.init(mode="online", settings=wandb.Settings(init_timeout=float(w.get("init_timeout", 60))),
                              **args)
        except Exception as e:  # unreachable, timed out, no API key: any of them, the run goes on offline
            say(f"W&B could not be reached ({type(e).__name__}: {str(e).strip()[:300]}); writing this run "
                f"offline under {Path(directory) / 'wandb'} - upload it later with `wandb sync "
                f"{Path(directory) / 'wandb'}/offline-run-*`")
    return wandb.init(mode="offline", **args)
