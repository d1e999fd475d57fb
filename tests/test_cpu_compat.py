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


JIT = r"""
import sys
import harness  # installs the hook before megatron.core is imported
import megatron.core
import megatron.core.jit as jit
import megatron.core.transformer.utils as tu
print(jit.jit_fuser is jit.noop_decorator, tu.gelu_impl.__module__ == tu.__name__,
      "torch._dynamo" in sys.modules, "torch._inductor.compile_fx" in sys.modules)
"""


def test_megatron_imports_without_torch_compile_on_a_cpu():
    """On a CPU megatron.core's fusers are its own no-op, so importing it loads neither dynamo nor inductor (3.4 s of
    its 6.5 s here): the decorated functions are plain functions, and nothing compiles them."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", JIT], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["True", "True", "False", "False"], res.stdout
