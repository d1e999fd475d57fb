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
    (Ignoring them here while megatron starts it would drop a signal that lands meanwhile on another thread.)
    The helper is a spawned interpreter that takes a second or more to reach its initializer, and a signal sent to
    the job's processes meanwhile kills it (the save then fails with EOFError); neither a blocked mask nor a
    handler survives the spawn. So it is started once, when the Checkpointer is made - before the trainer takes
    over the stop signals, when a signal still simply ends a process that has done nothing yet - and never inside
    the save that a stop signal asks for."""
    global _writer_manager
    from multiprocessing import get_context
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa

    if not hasattr(fsa, "_results_queue") or fsa._results_queue is not None:
        return
    _writer_manager = SyncManager(ctx=get_context("spawn"))
    _writer_manager.start(initializer=_ignore_stop_signals)
    fsa._results_queue = _writer_manager.Queue()


# The distributed optimizer's state as Megatron-LM saves it: one flat buffer shard per data-parallel rank, written
# and read without communication. megatron-core 0.16.1 defaults to 'fully_sharded_model_space', whose
# ShardedTensor(flattened_range=...) the same release refuses to save. This format resumes only at the same
# data-parallel size, which is why the checkpoint identity records that size.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


class Checkpointer:
    """Saves (synchronously, or in the background with megatron's async queue) and loads checkpoints. A checkpoint
    is complete once its `done` marker exists; with async saves the marker is written when every rank's writer has
    finished (`poll` at each step, `wait` before the run ends or stops)."""

    def __init__(self, distributed_optimizer: bool, keep_last: int, asynchronous: bool = False):
        self.metadata = OPTIMIZER_METADATA if distributed_optimizer else None
        self.keep_last = keep_last
        self.queue = None
        _start_writer_helpers()
        if asynchronous:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.queue = AsyncCallsQueue()

    def _state(self, model, optimizer, is_loading: bool) -> dict:
        msd = model.module.sharded_state_dict()
        return {"model": msd, "optimizer": optimizer.sharded_state_dict(msd, is_loading=is_loading,
                                                                        metadata=self.metadata)}

    def save(self, root: Path, step: int, model, optimizer, scheduler, identity: dict, extra: dict) -> Path:
        from megatron.core import dist_checkpointing

        self.wait()  # one save in flight at a time: the newest complete checkpoint is always on disk
        rank = dist.get_rank()
        path = step_dir(root, step)
        if rank == 0:
            if path.exists():  # an unfinished attempt at the same step
                shutil.rmtree(path)
            path.mkdir(parents=True)
        dist.barrier()
        request = dist_checkpointing.save(self._state(model, optimizer, False), str(path),
                                          async_sharded_save=self.queue is not None)
        torch.save({"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(), "extra": extra},
                   path / f"common_rank{rank:05d}.pt")

        def complete() -> None:
            dist.barrier()
            if rank == 0:
                (path / "identity.json").write_text(json.dumps(identity, indent=2, sort_keys=True))
                with open(path / DONE, "w") as f:
                    f.write(str(step))
                    f.flush()
                    os.fsync(f.fileno())
                for old in completed(root)[:-self.keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
            dist.barrier()

        if request is None:
            complete()
        else:
            request.add_finalize_fn(complete)
            self.queue.schedule_async_request(request)
        return path

    def poll(self) -> None:
        """Completes background saves that have finished on every rank (a collective: call it on all ranks)."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=True)

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
            self.queue = None

    def load(self, path: Path, model, optimizer, scheduler) -> dict:
        common = self.load_weights_and_optimizer(path, model, optimizer)
        scheduler.load_state_dict(common["scheduler"])
        set_rng_state(common["rng"])
        return common

    def load_weights_and_optimizer(self, path: Path, model, optimizer) -> dict:
        """The model and the optimizer's state (moments, steps); the schedule and RNG states stay the caller's."""
        from megatron.core import dist_checkpointing

        if self.metadata:
            _allocate_optimizer_state(optimizer)
        state = dist_checkpointing.load(self._state(model, optimizer, True), str(path))
        model.module.load_state_dict(state["model"])
        with torch.no_grad():  # fp32 runs: the optimizer's shards are views of the parameters, which require grad
            optimizer.load_state_dict(state["optimizer"])
        rank = dist.get_rank()
        common_file = path / f"common_rank{rank:05d}.pt"
        if not common_file.is_file():  # more ranks than the checkpoint had: the step and schedule are the same
            common_file = path / "common_rank00000.pt"
        common = torch.load(common_file, weights_only=False)
        if self.metadata:
            _own_adam_steps(optimizer, common["step"])
        return common


def _allocate_optimizer_state(optimizer) -> None:
    """megatron's distributed optimizer reads Adam's step from the torch optimizer's state while it builds the
    state dict to load into (with Apex or Transformer Engine it reads param_groups instead); a fresh optimizer has no
    state, and the read fails. Allocate what a first step would (zero moments, step 0): the load overwrites it."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        if len(inner.state) == 0 and opt.init_state_fn is not None:
            opt.init_state_fn(inner, opt.config)
            for st in inner.state.values():
                st.setdefault("step", torch.tensor(0.0))


def _own_adam_steps(optimizer, iteration: int) -> None:
    """megatron-core 0.16.1's distributed optimizer, without Apex or Transformer Engine (torch's Adam: CPUs, or GPU
    nodes without TE), loads Adam's `step` as ONE tensor shared by every parameter's state (and the dp_reshardable
    shards bring back 0 into it). torch's Adam increments each parameter's step in place, so the shared tensor
    advances once per parameter per update and the bias correction is wrong from the first step after a resume.
    Give every parameter its own step: the one its param group recorded (every update counts; we never skip one),
    else the training iteration."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        for group in inner.param_groups:
            value = float(group.get("step", iteration))
            for p in group["params"]:
                st = inner.state.get(p)
                if st is not None and "step" in st:
                    st["step"] = torch.tensor(value, dtype=torch.float32)


def check_identity(path: Path, identity: dict) -> None:
    """Refuse a checkpoint written for another model or training config, naming the keys that differ."""
    saved = json.loads((path / "identity.json").read_text())
    dp = "data_parallel_size"
    if saved.get(dp) != identity.get(dp):
        raise CheckpointMismatch(
            f"checkpoint {path} holds the distributed optimizer's state in {saved.get(dp) or 'no'} data-parallel "
            f"shards (dp_reshardable) and this run has {identity.get(dp) or 'no distributed optimizer'}: resume with "
            f"the same number of training processes (nodes x profile.nproc_per_node = {saved.get(dp) or 1}) and "
            f"train.distributed_optimizer as before, or delete {path.parent} to start the run afresh")
    diffs = [f"{k}: checkpoint {saved.get(k)!r} != run {identity.get(k)!r}"
             for k in sorted(set(saved) | set(identity)) if saved.get(k) != identity.get(k)]
    if diffs:
        raise CheckpointMismatch(f"checkpoint {path} is from another config: " + "; ".join(diffs))


