"""The collectives the training loop issues itself, checked the way NCCL would check them.

A process group whose only backend serves the `cuda` device type ("cuda:gloo") refuses a CPU tensor exactly as
NCCL does ("No backend type associated with device type cpu"): that is the failure that stopped GPU training after
its first step, when the stop flag and the validation sums were CPU tensors. On two real gloo ranks: the helpers
work and agree; under the cuda-only group a CPU tensor is refused; and the loop issues no tensor collective except
through the helpers, each given the trainer's device.
"""

import ast
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.training import collectives as coll
from harness.training.loop import local_device_index

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, backend: str, out) -> None:
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cpu = torch.device("cpu")
        if backend == "gloo":
            res = {"any": coll.any_rank(rank == 1, cpu), "none": coll.any_rank(False, cpu),
                   "sums": coll.sum_all([rank + 0.5, 2.0], cpu), "mean": coll.mean_all(torch.tensor(float(rank)))}
        else:
            try:
                coll.any_rank(True, cpu)
                res = {"refused": None}
            except RuntimeError as e:
                res = {"refused": str(e)}
        out.put((rank, res))
    finally:
        dist.destroy_process_group()


def _run(backend: str) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, backend, out)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = dict(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return got


def test_helpers_agree_on_two_gloo_ranks():
    got = _run("gloo")
    for rank in (0, 1):
        assert got[rank] == {"any": True, "none": False, "sums": [2.0, 4.0], "mean": 0.5}


def test_a_cuda_only_group_refuses_cpu_tensors_as_nccl_does():
    got = _run("cuda:gloo")
    for rank in (0, 1):
        assert got[rank]["refused"] and "No backend type associated with device type cpu" in got[rank]["refused"]


TENSOR_COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
                      "broadcast", "reduce", "all_to_all", "all_to_all_single", "gather", "scatter", "send", "recv"}


def test_the_loop_issues_tensor_collectives_only_through_the_helpers_on_its_device():
    """Outside collectives.py no harness training module calls a torch.distributed tensor collective; every call
    of a helper in the loop passes the trainer's device (mean_all takes a tensor already on it: the step's loss)."""
    for path in sorted((REPO / "harness" / "training").glob("*.py")):
        if path.name == "collectives.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name, owner = node.func.attr, node.func.value
                if name in TENSOR_COLLECTIVES and isinstance(owner, ast.Name) and owner.id == "dist":
                    pytest.fail(f"{path.name}:{node.lineno}: dist.{name} outside harness.training.collectives")
                if isinstance(owner, ast.Name) and owner.id == "coll" and name in ("any_rank", "sum_all"):
                    device = ast.unparse(node.args[-1]) if len(node.args) == 2 else None
                    assert device in ("self.device", "device"), \
                        f"{path.name}:{node.lineno}: coll.{name} must be given the trainer's device, got {device}"
    calls = {n.func.attr for n in ast.walk(ast.parse((REPO / "harness/training/loop.py").read_text()))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert calls >= {"any_rank", "sum_all", "mean_all", "agreed"}, "the stop flag, validation sums and the loss"


@pytest.mark.parametrize("local_rank,visible,expected", [(0, 8, 0), (5, 8, 5), (5, 1, 0), (7, 1, 0), (3, 2, 1)])
def test_each_rank_picks_a_gpu_it_can_see(local_rank, visible, expected):
    """Where Slurm gives each task its own GPU (--gpus-per-task=1), every rank sees one device, index 0:
    set_device(SLURM_LOCALID) failed there for every rank but the first."""
    assert local_device_index(local_rank, visible) == expected
    with pytest.raises(RuntimeError, match="no device is visible"):
        local_device_index(0, 0)
