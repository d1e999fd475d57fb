"""megatron.core without torch.compile at import time on a CPU.

`megatron.core.jit` sets `jit_fuser = torch.compile`, and a dozen modules decorate functions with it as megatron.core
is imported. The first decoration imports torch._dynamo and torch._inductor: measured here, `import megatron.core`
takes 6.5 s with them and 3.1 s without. Every trainer, gloo rank, Slurm task and warm worker pays that once. None of
the decorated functions runs on a CPU with the harness's model settings (model.py turns the bias/activation, rope
and softmax fusions off there), so the import is all it costs.

`install()` (called by `harness/__init__.py`, before anything imports megatron) hooks the loading of
`megatron.core.jit`: right after that module runs, and only when CUDA is unavailable, it calls megatron's own
`disable_jit_fuser()`, so the decorators that follow are megatron's no-op. On a GPU nothing changes. No torch import
here: the hook costs nothing to processes that never load megatron.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "megatron.core.jit"


class _DisableOnCpu(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        disable = getattr(module, "disable_jit_fuser", None)
        if disable is not None and not module.torch.cuda.is_available():
            disable()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _DisableOnCpu(spec.loader)
        return spec


def install() -> None:
    if TARGET not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
