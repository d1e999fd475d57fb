"""megatron.core 0.16.1 on a CPU: redirect its hard-coded CUDA device choices to the CPU. Device redirection only:
no numerical change, and nothing here runs when CUDA is in use.

megatron.core picks devices in a few places with `torch.cuda.current_device()` or `device="cuda"`, keeps its
model-parallel RNG states in CUDA generators, and asserts CUDA gradient types when clipping. Rather than patching
torch globally, each affected megatron module gets its own view of `torch` in which
  - tensor factories (`torch.zeros(..., device="cuda")` and the like) build on the CPU,
  - `torch.cuda.current_device()` is the CPU, `synchronize` / `empty_cache` do nothing,
  - `torch.cuda` RNG calls use the CPU generator;
the RNG tracker's state get/set use the CPU generator, and gradient clipping scales the CPU gradients itself
(the same multiplication megatron's fallback kernel does, without its CUDA type assertion). The optimizers that sort
parameters by their `Tensor.type()` string ('torch.cuda.FloatTensor', ...: the distributed optimizer, and the
mixed-precision one used for bf16) are built while CPU parameters report the CUDA name of their dtype.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import types

import torch

# Modules of megatron.core that name CUDA devices directly (found by reading 0.16.1; see tests/test_cpu_compat.py).
MODULES = (
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.utils",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.random",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.utils",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.async_utils",
)
FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint", "zeros_like",
             "ones_like", "empty_like", "full_like", "as_tensor")
CPU = torch.device("cpu")


def _to_cpu(device):
    if device is None:
        return None
    if isinstance(device, int) or (isinstance(device, str) and device.startswith("cuda")) or (
            isinstance(device, torch.device) and device.type == "cuda"):
        return CPU
    return device


def _redirected(factory):
    @functools.wraps(factory)
    def make(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        return factory(*args, **kwargs)

    return make


class _CudaOnCpu:
    """`torch.cuda` as megatron's modules see it on a CPU."""

    def current_device(self):
        return CPU

    def synchronize(self, *args, **kwargs):
        pass

    def empty_cache(self):
        pass

    def manual_seed(self, seed):
        torch.manual_seed(seed)

    def get_rng_state(self, *args, **kwargs):
        return torch.get_rng_state()

    def set_rng_state(self, state, *args, **kwargs):
        torch.set_rng_state(state)

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class _TorchOnCpu(types.ModuleType):
    """`torch` as megatron's modules see it on a CPU: the same module but for device choices."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CudaOnCpu()
        for name in FACTORIES:
            setattr(self, name, _redirected(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


def _get_rng_state_cpu(device=None, clone=False, graph_safe=False):
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _set_rng_state_cpu(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def _clip_grad_by_total_norm_fp32_cpu(parameters, max_norm, total_norm, use_decoupled_grad=False):
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        for g in grads:
            g.copy_(g * clip_coeff)  # what megatron's local multi_tensor_scale does


@contextlib.contextmanager
def _parameters_report_cuda_types():
    """While megatron's optimizers sort parameters by `param.type()` ('torch.cuda.FloatTensor' / 'HalfTensor' /
    'BFloat16Tensor', else TypeError), a CPU parameter answers with the CUDA name of its dtype. Scoped to the
    optimizer's construction; `type(dtype)` conversions are untouched."""
    param_cls = torch.nn.Parameter

    def cuda_type_name(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs and self.device.type == "cpu":
            return torch.Tensor.type(self).replace("torch.", "torch.cuda.", 1)
        return torch.Tensor.type(self, dtype, non_blocking, **kwargs)

    had = "type" in param_cls.__dict__
    previous = param_cls.__dict__.get("type")
    param_cls.type = cuda_type_name
    try:
        yield
    finally:
        if had:
            param_cls.type = previous
        else:
            del param_cls.type


def _built_with_cuda_type_names(cls) -> None:
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        with _parameters_report_cuda_types():
            init(self, *args, **kwargs)

    cls.__init__ = __init__


_applied = False


def apply() -> None:
    """Redirect megatron.core's CUDA device choices to the CPU (idempotent). Call before building the model."""
    global _applied
    if _applied or torch.cuda.is_available():
        return
    view = _TorchOnCpu()
    for name in MODULES:
        mod = importlib.import_module(name)
        if getattr(mod, "torch", None) is torch:
            mod.torch = view
    rnd = importlib.import_module("megatron.core.tensor_parallel.random")
    rnd._get_cuda_rng_state = _get_rng_state_cpu
    rnd._set_cuda_rng_state = _set_rng_state_cpu
    for name in ("megatron.core.optimizer.optimizer", "megatron.core.optimizer.clip_grads"):
        importlib.import_module(name).clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32_cpu
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params

    for cls in (DistributedOptimizer, Float16OptimizerWithFloat16Params):
        _built_with_cuda_type_names(cls)
    _applied = True
