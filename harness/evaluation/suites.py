"""What an evaluation suite (evals/<suite>.yaml) defines, read without building it: the names its tasks and groups
take in lm-eval (`<suite>_<task>`, `<suite>_<group>`, `<suite>` for all of it), each task's output type and
settings, and which tasks may seed synthetic data. `harness validate` checks a recipe's task names here, before
any work: the built suite does not exist yet at validation."""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Callable

import yaml

EVALS = Path(__file__).resolve().parents[2] / "evals"
SPLITS = ("train", "validation", "test")
OUTPUT_TYPES = ("multiple_choice", "generate_until")


@functools.cache
def definition(suite: str) -> dict:
    path = EVALS / f"{suite}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no suite '{suite}' ({path})")
    return yaml.safe_load(path.read_text())


def task_settings(entry) -> dict:
    """A task's entry: a string names an lm-eval task (lm_eval suites), a mapping holds its splits (offline
    suites) and settings."""
    return {"lm_eval": entry} if isinstance(entry, str) else dict(entry)


def output_type(suite: str, task: str) -> str:
    return task_settings(definition(suite)["tasks"][task]).get("output_type", "multiple_choice")


def names(suite: str) -> dict[str, list[str]]:
    """{lm-eval name: the suite's tasks it evaluates}, for every task, every group and the suite as a whole."""
    d = definition(suite)
    out = {f"{suite}_{t}": [t] for t in d["tasks"]}
    for g, members in d.get("groups", {}).items():
        out[f"{suite}_{g}"] = list(members)
    out[suite] = [t for members in d.get("groups", {}).values() for t in members]
    return out


def executing_code(suite: str, tasks: list[str]) -> list[str]:
    """The suite tasks among `tasks` (names, groups) whose scoring runs the model's code (HumanEval, MBPP)."""
    known, d = names(suite), definition(suite)
    hit = {t for name in tasks for t in known.get(name, []) if task_settings(d["tasks"][t]).get("executes_code")}
    return sorted(hit)


def check(suite: str, tasks: list[str], where: str, bad: Callable[[str, str], None], seeding: bool = False) -> None:
    """Unknown tasks or groups refused with a did-you-mean; for seeding, a task of the held-out group (it would no
    longer be held out) or one without a train split (nothing to seed from)."""
    try:
        known = names(suite)
    except FileNotFoundError:
        return  # eval.suite's own check says so
    d = definition(suite)
    held_out = set(d.get("groups", {}).get("held_out", []))
    for name in tasks:
        if name not in known:
            near = difflib.get_close_matches(name, list(known), n=1)
            bad(where, f"suite '{suite}' has no task or group '{name}'" + (f" (did you mean '{near[0]}'?)" if near
                                                                            else f" (evals/{suite}.yaml)"))
            continue
        if not seeding:
            continue
        if held_out & set(known[name]):
            bad(where, f"'{name}' holds {', '.join(sorted(held_out & set(known[name])))} of the suite's held-out group: "
                       f"a task that seeds synthetic data is no longer held out")
        if d.get("source") != "lm_eval":  # an offline suite's entry names its splits
            unseedable = [t for t in known[name]
                          if t not in held_out and "train" not in task_settings(d["tasks"][t])]
            if unseedable:
                bad(where, f"'{name}': {', '.join(unseedable)} has no train split to seed from")
