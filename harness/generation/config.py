"""The `generator` section of a recipe: its typed configuration and its checks, next to the code it configures.

recipe.py composes it into the Recipe and calls `validate` with its problem collector."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from harness.checks import bad_number, did_you_mean

# vLLM applies the model's generation_config.json (top_k, repetition_penalty, min_p, ...) to every field a request
# leaves unset when this is 'auto'; 'vllm' uses vLLM's neutral defaults, so the recipe's temperature and top_p are
# the whole sampling setting. A folder path is also accepted (vLLM reads generation_config.json from it).
GENERATION_CONFIGS = ("vllm", "auto")


@dataclass
class VLLMConfig:
    """Settings of the vLLM engine, for `vllm serve` (managed server, server_kind vllm) and the offline backend."""

    max_model_len: Optional[int] = None  # None: the model's own context length
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    generation_config: str = "vllm"  # vllm | auto | a folder holding generation_config.json
    extra_args: list[str] = field(default_factory=list)  # more `vllm serve` flags, e.g. ["--enable-prefix-caching"]
    chunk_size: int = 2048  # offline backend: requests per engine call; each chunk is committed before the next
    env: Optional[str] = None  # managed server: the environment holding vLLM (default: beside the job's interpreter,
    #                            else <repo>/.venv-vllm; never PATH). vLLM pins its own torch: keep it apart.


@dataclass
class GeneratorConfig:
    """The LLM that writes synthetic Q&A. backend transformers: local generation with continuous batching (the CPU
    default: no server, reproducible); ctranslate2: local int8 generation with CTranslate2 (the same model
    converted once; faster on a CPU); openai: any OpenAI-compatible server - `server: managed` starts one
    (`server_kind` vllm on a GPU node, transformers on a CPU) for the stage, or give its URL; vllm: the offline
    engine (GPU extra)."""

    backend: str = "transformers"
    model: str = "smollm2-135m-instruct"  # a catalogue name (.cache/models), a folder, or a hub / server model name
    server: str = "managed"  # managed | http://host:port/v1
    server_kind: str = "transformers"  # transformers | vllm (managed servers)
    concurrency: int = 32
    timeout: float = 300.0  # seconds per request
    max_retries: int = 5
    startup_timeout: float = 300.0
    batch_size: int = 32  # transformers, ctranslate2: requests per batch (part of the sample)
    shards: int = 1  # each generated set's requests split by seed into this many stages (a Slurm job array)
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 192
    templates: Optional[str] = None  # a folder of prompt templates overriding the built-in ones (same names)
    offline: Optional[bool] = None  # HF_HUB_OFFLINE for a managed server: None keeps the environment's setting
    # the answer's first word ("Question:") written for the model, which continues it: a small model then keeps to
    # the format. None: where the backend can (local transformers or ctranslate2, vLLM offline or `vllm serve`; not
    # `transformers serve`, which always opens a new turn); true for a URL server that honours
    # continue_final_message (vLLM, SGLang)
    prefill: Optional[bool] = None
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


SERVER_KINDS = ("transformers", "vllm")
# local backends that load the weights themselves and sample a batch at a time (the batch size is part of a sample)
LOCAL_BATCHED = ("transformers", "ctranslate2")




def uses_vllm(g: GeneratorConfig) -> bool:
    return g.backend == "vllm" or (g.backend == "openai" and g.server == "managed" and g.server_kind == "vllm")


def prefills(g: GeneratorConfig) -> bool:
    """Whether requests carry the start of their answer (see GeneratorConfig.prefill)."""
    if g.prefill is not None:
        return g.prefill
    return g.backend in LOCAL_BATCHED + ("vllm",) or uses_vllm(g)


def validate(g: GeneratorConfig, bad: Callable[[str, str], None]) -> None:
    from harness.generation.backends import BACKENDS
    from harness.generation.models import CATALOGUE, is_local

    if g.backend not in BACKENDS:
        bad("generator.backend", f"unknown backend '{g.backend}'{did_you_mean(g.backend, BACKENDS)} "
                                 f"({', '.join(BACKENDS)})")
    if g.backend == "openai":
        if g.server != "managed" and not re.match(r"^https?://", g.server):
            bad("generator.server", f"'{g.server}' is neither 'managed' nor an http(s):// URL")
        if g.server == "managed" and g.server_kind not in SERVER_KINDS:
            bad("generator.server_kind", f"unknown server kind '{g.server_kind}' ({', '.join(SERVER_KINDS)})")
    # transformers loads the weights itself: a folder or a catalogue entry; vllm may download a hub name
    local_model = g.backend in LOCAL_BATCHED or (g.backend == "openai" and g.server == "managed"
                                                   and g.server_kind == "transformers")
    if local_model and not is_local(g.model):
        bad("generator.model", f"'{g.model}' is neither a model folder nor a catalogue name "
                               f"({', '.join(CATALOGUE)})")
    for key in ("concurrency", "batch_size", "max_tokens", "shards"):
        if getattr(g, key) < 1:
            bad(f"generator.{key}", "must be at least 1")
    if g.max_retries < 0 or g.timeout <= 0:
        bad("generator", "max_retries must be >= 0 and timeout > 0")
    if bad_number(g.temperature) or g.temperature < 0 or not 0 < g.top_p <= 1:
        bad("generator", f"temperature must be >= 0 and top_p in (0, 1] (got {g.temperature}, {g.top_p})")
    if g.prefill and g.backend == "openai" and g.server == "managed" and g.server_kind == "transformers":
        bad("generator.prefill", "`transformers serve` cannot continue a prefilled answer (it always opens a new "
                                 "turn): leave prefill unset, or use backend transformers")
    if g.templates is not None and not os.path.isdir(g.templates):
        bad("generator.templates", f"no folder '{g.templates}'")
    _validate_vllm(g.vllm, bad)


def _validate_vllm(v: VLLMConfig, bad: Callable[[str, str], None]) -> None:
    if v.max_model_len is not None and v.max_model_len < 1:
        bad("generator.vllm.max_model_len", f"must be at least 1 (or null for the model's own), got {v.max_model_len}")
    if bad_number(v.gpu_memory_utilization) or not 0 < v.gpu_memory_utilization <= 1:
        bad("generator.vllm.gpu_memory_utilization", f"must be in (0, 1], got {v.gpu_memory_utilization}")
    if v.tensor_parallel_size < 1:
        bad("generator.vllm.tensor_parallel_size", f"must be at least 1, got {v.tensor_parallel_size}")
    if v.chunk_size < 1:
        bad("generator.vllm.chunk_size", f"must be at least 1, got {v.chunk_size}")
    gc = v.generation_config
    if gc not in GENERATION_CONFIGS and not os.path.isdir(os.path.expanduser(gc)):
        bad("generator.vllm.generation_config", f"'{gc}' is neither {' nor '.join(GENERATION_CONFIGS)} nor a folder "
                                                f"holding generation_config.json")
    owned = {f"--{k}" for k in ENGINE_FLAGS.values()} | {"--host", "--port", "--served-model-name"}
    for i, arg in enumerate(v.extra_args):
        if not isinstance(arg, str) or not arg:
            bad(f"generator.vllm.extra_args[{i}]", "must be a non-empty string")
        elif arg.split("=", 1)[0] in owned:
            bad(f"generator.vllm.extra_args[{i}]", f"'{arg}' is set by the harness; use generator.vllm."
                f"{arg.split('=', 1)[0][2:].replace('-', '_')} (or host/port: managed)")


# VLLMConfig field -> the engine argument (LLM(...) keyword; `vllm serve --<flag>` with '_' -> '-')
ENGINE_FLAGS = {"max_model_len": "max-model-len", "gpu_memory_utilization": "gpu-memory-utilization",
                "tensor_parallel_size": "tensor-parallel-size", "generation_config": "generation-config"}


def engine_kwargs(v: VLLMConfig | dict) -> dict:
    """The engine settings as keyword arguments of vllm.LLM (None: vLLM's own default)."""
    d = v if isinstance(v, dict) else {k: getattr(v, k) for k in ENGINE_FLAGS}
    return {k: d[k] for k in ENGINE_FLAGS if d.get(k) is not None}


def serve_args(v: VLLMConfig | dict) -> list[str]:
    """The engine settings as `vllm serve` flags, then the recipe's extra_args as given."""
    d = v if isinstance(v, dict) else {"extra_args": list(v.extra_args), **engine_kwargs(v)}
    args = [x for k, flag in ENGINE_FLAGS.items() if d.get(k) is not None for x in (f"--{flag}", str(d[k]))]
    return args + list(d.get("extra_args") or [])
