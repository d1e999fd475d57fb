"""Stages: units of work with a content-addressed output in the run store.

A stage class names its kind, carries a version (bump it when its output changes for the same inputs), and runs
in a StageContext: its work folder (published atomically when `run` returns), its inputs' published folders and
manifests, and a logger. The same `run` is called by every executor.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness.checks import did_you_mean


@dataclass
class StageSpec:
    id: str  # e.g. "tokenize/corpus", "blend/seeded_10/seed1"
    kind: str
    config: dict  # everything the output depends on (hashed)
    runtime: dict = field(default_factory=dict)  # how to run it: paths, workers (not hashed)
    deps: dict[str, str] = field(default_factory=dict)  # input name -> stage id
    digest: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "config": self.config, "runtime": self.runtime, "deps": self.deps,
                "digest": self.digest}


@dataclass
class StageContext:
    spec: StageSpec
    workdir: Path
    inputs: dict[str, Path]
    manifests: dict[str, dict]
    log: logging.Logger
    final_dir: Path = Path()  # where workdir will be published (for outputs that must name their final paths)

    def input_rows(self, name: str) -> list[dict]:
        """The JSONL rows of input `name`: the file its manifest's result names (`file`)."""
        return read_jsonl(self.inputs[name] / self.manifests[name]["result"]["file"])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows) -> int:
    """Rows as JSON lines; returns how many."""
    n = 0
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n


EXIT_REQUEUE = 75  # EX_TEMPFAIL: progress saved, then stopped on request; a rerun (or a requeue) resumes
INTERRUPTED = "INTERRUPTED"  # a file a stage's worker processes leave in its workdir once they saved and stopped


class StageInterrupted(Exception):
    """The stage saved its progress and stopped on request (SIGTERM/SIGUSR1); rerunning it resumes."""


class Stage:
    kind: ClassVar[str]
    version: ClassVar[int] = 1

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Write outputs under ctx.workdir; return counts and facts for the manifest."""
        raise NotImplementedError


REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    REGISTRY[cls.kind] = cls
    return cls


def get(kind: str) -> type[Stage]:
    _load_builtin()
    if kind not in REGISTRY:
        raise KeyError(f"unknown stage kind '{kind}'{did_you_mean(kind, REGISTRY)}")
    return REGISTRY[kind]


def kinds() -> list[str]:
    _load_builtin()
    return sorted(REGISTRY)


def _load_builtin() -> None:
    from harness.stages import base, blend, evaluate, filter, generate, passages, synthetic, tokenize, train  # noqa: F401  (registration on import)
