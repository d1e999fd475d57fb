"""Generation backends behind one small interface.

A backend takes chat requests and reports each completion through a callback as it arrives, in any order; the
caller keys results by Request.key. Backends: `openai` (any OpenAI-compatible server: `vllm serve` on GPU nodes,
`transformers serve` on a CPU), `transformers` (local batched generation), `vllm` (the offline engine; GPU extra,
imported lazily). Registered by name so that a recipe names one and a new one needs no if-chain elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

from harness.checks import did_you_mean


@dataclass(frozen=True)
class Request:
    key: str  # the caller's id, e.g. "gen/offline_arc_easy/train/12#1"
    messages: tuple  # ((role, content), ...)
    max_tokens: int
    temperature: float
    top_p: float
    seed: int

    def as_chat(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.messages]

    @property
    def prefill(self) -> str:
        """The start of the answer, when the last message is the assistant's: the model continues it (the
        completion is the continuation alone)."""
        return self.messages[-1][1] if self.messages and self.messages[-1][0] == "assistant" else ""


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None  # the request was refused for itself (e.g. prompt too long); the run goes on


class GenerationError(RuntimeError):
    """The backend cannot go on (server dead after retries, model missing): the stage stops, publishes nothing."""


@dataclass
class BackendOptions:
    model: str  # a model folder, or the name a server knows the model by
    base_url: str | None = None  # openai: http://127.0.0.1:8000/v1
    concurrency: int = 32
    timeout: float = 300.0
    max_retries: int = 5
    batch_size: int = 16  # local backends
    chunk_size: int | None = None  # offline engines: requests per call, committed before the next
    engine: dict = field(default_factory=dict)  # vllm: engine settings (LLM keyword arguments)


class Backend:
    name: ClassVar[str]
    # requests per generate() call when set: the driver commits each call's answers before the next one
    commit_every: int | None = None

    def __init__(self, opts: BackendOptions):
        self.opts = opts

    def generate(self, requests: list[Request], on_done: Callable[[Request, Completion], None]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalBatched(Backend):
    """A backend holding the model itself and sampling a batch at a time: requests in key order, one sampling
    setting per chunk of `batch_size`, prompts built by the model's chat template (a prefilled answer continued)."""

    tok = None  # the model's tokenizer (set by the subclass)

    def chunks(self, requests) -> list[list]:
        """The batches `requests` are generated in: key order, one sampling setting per chunk, batch_size each."""
        groups: dict[tuple, list] = {}
        for r in sorted(requests, key=lambda r: r.key):
            groups.setdefault((r.max_tokens, r.temperature, r.top_p), []).append(r)
        bs = max(1, self.opts.batch_size)
        return [reqs[i:i + bs] for reqs in groups.values() for i in range(0, len(reqs), bs)]

    def prompt_ids(self, chunk) -> list[list[int]]:
        out = []
        for r in chunk:
            enc = self.tok.apply_chat_template(r.as_chat(), add_generation_prompt=not r.prefill,
                                               continue_final_message=bool(r.prefill), tokenize=True)
            out.append(list(enc["input_ids"] if hasattr(enc, "keys") else enc))
        return out


REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    REGISTRY[cls.name] = cls
    return cls


def make(name: str, opts: BackendOptions) -> Backend:
    from harness.generation.backends import ct2_local, hf_local, openai, vllm_offline  # noqa: F401  (registration)

    if name not in REGISTRY:
        raise KeyError(f"unknown generation backend '{name}'{did_you_mean(name, REGISTRY)}; known: "
                       f"{', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](opts)


BACKENDS = ("ctranslate2", "openai", "transformers", "vllm")  # for recipe validation without importing the backends
