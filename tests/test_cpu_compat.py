"""The CPU compatibility module redirects megatron.core's device choices, and nothing else."""

import os
import subprocess
import sys

CODE = r"""
import torch
from harness.training import cpu_compat
cpu_compat.apply()
cpu_compat.apply()  # idempotent
import megatron.core.optimizer.clip_grads as cg
import megatron.core.tensor_parallel.random as rnd
view = cg.torch
assert view is not torch and view.zeros(2, device="cuda").device.type == "cpu"
assert view.tensor([1.0], device=torch.device("cuda", 0)).device.type == "cpu"
assert view.cuda.current_device() == torch.device("cpu")
assert view.Tensor is torch.Tensor and view.float32 is torch.float32  # everything else is torch itself
try:
    torch.zeros(1, device="cuda")  # torch itself is untouched
    raise SystemExit("torch was patched globally")
except (AssertionError, RuntimeError):
    pass
# the RNG tracker forks the CPU generator and restores it
torch.manual_seed(0)
rnd.get_cuda_rng_tracker().reset()
rnd.get_cuda_rng_tracker().add("model-parallel-rng", 123)
before = torch.get_rng_state()
with rnd.get_cuda_rng_tracker().fork():
    a = torch.rand(3)
assert torch.equal(torch.get_rng_state(), before)
torch.manual_seed(123)
assert torch.equal(a, torch.rand(3)), "the tracker's state is the CPU generator seeded with its seed"
# gradient clipping scales CPU gradients by max_norm / total_norm
p = torch.nn.Parameter(torch.ones(4)); p.grad = torch.full((4,), 2.0)
cg.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)
assert torch.allclose(p.grad, torch.full((4,), 2.0 * 1.0 / (4.0 + 1e-6)))
print("ok")
"""


def test_cpu_redirection():
    # no visible GPU, also on a machine that has one: apply() does nothing where CUDA is available
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
