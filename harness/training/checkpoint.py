"""Checkpoints with megatron.core's dist_checkpointing: model and optimizer as sharded tensors (torch_dist), plus
per-rank common state (step, scheduler, RNG states). A checkpoint counts only once its `done` marker exists
(written last, after every rank has saved); resume takes the newest such checkpoint and the last K are kept."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

DONE = "done"


class CheckpointMismatch(ValueError):
    pass


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def completed(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / DONE).is_file())


def latest(root: Path) -> Path | None:
    done = completed(root)
    return done[-1] if done else None


def rng_state() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "tracker": get_cuda_rng_tracker().get_states(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _ignore_stop_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


_writer_manager = None


def _start_writer_helpers() -> None:
    """dist_checkpointing writes through a helper process (a multiprocessing manager it starts on first use) that
    would die of the SIGTERM/SIGUSR1 asking us to save - Slurm signals every process of a preempted job - and take
    the save down with it. We start that helper ourselves, ignoring those signals, and hand megatron its queue.
    (Ignoring them here while megatron starts it would drop a signal that lands meanwhile on another thread.)"""
    global _writer_manager
    from multiprocessing import get_context
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa

    if not hasattr(fsa, "_results_queue") or fsa._results_queue is not None:
        return
    _writer_manager = SyncManager(ctx=get_context("spawn"))
    _writer_manager.start(initializer=_ignore_stop_signals)
    fsa._results_queue = _writer_manager.Queue()


def save(root: Path, step: int, model, optimizer, scheduler, identity: dict, extra: dict, keep_last: int) -> Path:
    from megatron.core import dist_checkpointing

    _start_writer_helpers()
    rank = dist.get_rank()
    path = step_dir(root, step)
    if rank == 0:
        if path.exists():  # an unfinished attempt at the same step
            shutil.rmtree(path)
        path.mkdir(parents=True)
    dist.barrier()
    msd = model.module.sharded_state_dict()
    dist_checkpointing.save({"model": msd, "optimizer": optimizer.sharded_state_dict(msd)}, str(path))
    torch.save({"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(), "extra": extra},
               path / f"common_rank{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        (path / "identity.json").write_text(json.dumps(identity, indent=2, sort_keys=True))
        with open(path / DONE, "w") as f:
            f.write(str(step))
            f.flush()
            os.fsync(f.fileno())
        for old in completed(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return path


def check_identity(path: Path, identity: dict) -> None:
    """Refuse a checkpoint written for another model or training config, naming the keys that differ."""
    saved = json.loads((path / "identity.json").read_text())
    diffs = [f"{k}: checkpoint {saved.get(k)!r} != run {identity.get(k)!r}"
             for k in sorted(set(saved) | set(identity)) if saved.get(k) != identity.get(k)]
    if diffs:
        raise CheckpointMismatch(f"checkpoint {path} is from another config: " + "; ".join(diffs))


def load(path: Path, model, optimizer, scheduler) -> dict:
    from megatron.core import dist_checkpointing

    rank = dist.get_rank()
    msd = model.module.sharded_state_dict()
    state = dist_checkpointing.load({"model": msd, "optimizer": optimizer.sharded_state_dict(msd, is_loading=True)},
                                    str(path))
    model.module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    common = torch.load(path / f"common_rank{rank:05d}.pt", weights_only=False)
    scheduler.load_state_dict(common["scheduler"])
    set_rng_state(common["rng"])
    return common
