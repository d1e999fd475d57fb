"""The recipe's `eval:` section and its checks, beside the stage it configures; recipe.py composes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from harness.checks import did_you_mean
from harness.evaluation import suites

BACKENDS = ("hf", "megatron", "vllm")


@dataclass
class EvalConfig:
    suite: str = "offline"  # evals/<suite>.yaml
    tasks: list[str] = field(default_factory=lambda: ["offline_seeded", "offline_held_out"])  # lm-eval tasks/groups
    limit: Optional[int] = None  # items per task (None: all)
    num_fewshot: Optional[int] = None  # None: each task's own (the suite's num_fewshot, else 0); a number: all tasks
    batch_size: int = 32
    backend: str = "hf"  # hf: lm-eval's transformers backend on the export | megatron: ours, on the checkpoint
    #                      | vllm: lm-eval's vLLM backend on the export (GPU nodes)
    apply_chat_template: bool = False  # lm-eval renders every request with the model's chat template (instruct
    #                                    models); the same for every arm, seed and the base
    allow_code_execution: bool = False  # code tasks (HumanEval, MBPP) run the model's programs: an explicit opt-in


def validate(e: EvalConfig, bad: Callable[[str, str], None]) -> None:
    if not (suites.EVALS / f"{e.suite}.yaml").is_file():
        bad("eval.suite", f"no suite '{e.suite}' (evals/{e.suite}.yaml)")
    if not e.tasks:
        bad("eval.tasks", "at least one task or group is required")
    suites.check(e.suite, list(e.tasks), "eval.tasks", bad)
    if (suites.EVALS / f"{e.suite}.yaml").is_file() and not e.allow_code_execution:
        code = suites.executing_code(e.suite, list(e.tasks))
        if code:
            bad("eval.tasks", f"{', '.join(code)} run the model's generated code to score it; set "
                              f"eval.allow_code_execution: true where that is acceptable (a sandboxed node)")
    if e.backend not in BACKENDS:
        bad("eval.backend", f"unknown backend '{e.backend}'{did_you_mean(e.backend, BACKENDS)} ({', '.join(BACKENDS)})")
    if e.limit is not None and e.limit < 1:
        bad("eval.limit", "must be at least 1 (or null for every item)")
    if e.num_fewshot is not None and e.num_fewshot < 0:
        bad("eval.num_fewshot", f"must be 0 or more (or null: each task's own), got {e.num_fewshot}")
