"""Every collective the training loop issues itself (megatron issues its own), on the training device.

NCCL - the backend of every GPU run - has no CPU implementation: a CPU tensor handed to it fails with "No backend
type associated with device type cpu". So each helper takes the device explicitly and builds its tensor there;
nothing in the loop calls torch.distributed's tensor collectives directly (tests/test_collectives.py checks both,
the failure class with a process group whose only backend serves the `cuda` device type).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any (a stop request that reached only some ranks)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_all(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over ranks, in one collective."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def mean_all(value: torch.Tensor) -> float:
    """The mean over ranks of a scalar that already lives on the training device (the step's loss)."""
    t = value.detach().reshape(1).float()
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
