__version__ = "0.1.0"

from harness.training import megatron_jit as _megatron_jit  # noqa: E402

_megatron_jit.install()  # before anything imports megatron.core: see the module
