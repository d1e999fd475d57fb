"""Build a suite from lm-eval's own task definitions (evals/paper.yaml): every split of every task, read through
the task's doc_to_text / doc_to_choice / doc_to_target, is written in the suite schema (id, query, choices, gold)
with the same files and lm-eval YAMLs as the offline suite, so that seeds, decontamination, evaluation and the
report treat both alike. lm-eval loads the datasets (the Hugging Face hub, or its cache): it runs on a node that
can reach them.

Groups (mmlu) are flattened into one task of all their subtasks. A blank-filling task whose prompt lm-eval scores
by context (winogrande: doc_to_text gives the answer's index) becomes query + continuations, as in the offline
suite.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from harness.evaluation.offline_suite import _winogrande, write_group, write_split, write_task_yaml
from harness.seeds.collect import describe, leaf_tasks

SPLITS = {"train": "training_docs", "validation": "validation_docs", "test": "test_docs"}


class SuiteError(ValueError):
    pass


def _normalise(task, name: str, doc: dict) -> dict:
    if "sentence" in doc and "option1" in doc:
        return _winogrande(doc)
    query = task.doc_to_text(doc)
    if not isinstance(query, str):
        raise SuiteError(f"task {name}: its prompt is scored by context (doc_to_text gave {query!r}); the suite "
                         f"schema needs a query and continuations")
    choices = [str(c) for c in task.doc_to_choice(doc)]
    target = task.doc_to_target(doc)
    gold = choices.index(target) if isinstance(target, str) else int(target)
    return {"query": query, "choices": choices, "gold": gold}


def read_task(tm, lm_task: str) -> tuple[dict[str, list[dict]], str]:
    """({split: docs} of an lm-eval task or group, in the suite schema; what it tests, in words). The subtasks of a
    group are flattened into one task whose documents keep their own subtask and description (seeds read them)."""
    from lm_eval.tasks import get_task_dict

    if lm_task not in tm.all_tasks:
        raise SuiteError(f"lm-eval has no task or group '{lm_task}'")
    leaves = sorted(leaf_tasks(get_task_dict([lm_task], tm)).items())
    splits: dict[str, list[dict]] = {}
    for name, task in leaves:
        if task.OUTPUT_TYPE != "multiple_choice":
            raise SuiteError(f"task {name} is {task.OUTPUT_TYPE}: the suite holds multiple-choice tasks")
        own = {"subtask": name, "description": describe(task, name)} if len(leaves) > 1 else {}
        for split, method in SPLITS.items():
            if getattr(task, f"has_{method.split('_')[0]}_docs")():
                splits.setdefault(split, []).extend({**_normalise(task, name, d), **own}
                                                    for d in getattr(task, method)())
    return splits, describe(leaves[0][1], lm_task) if len(leaves) == 1 else lm_task.replace("_", " ")


def build(name: str, definition: dict, out: Path, final: Path, include_path: str | None = None) -> dict:
    """Write <out>/data and <out>/tasks for suite `name`; returns {task: {split: count}}."""
    from lm_eval.tasks import TaskManager

    prefix = f"{name}_"
    tm = TaskManager(include_path=include_path or definition.get("include_path"), include_defaults=True)
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    for task, lm_task in definition["tasks"].items():
        splits, description = read_task(tm, lm_task)
        splits = {split: docs for split, docs in splits.items() if docs}
        if not set(splits) & {"validation", "test"}:
            raise SuiteError(f"suite {name}: task {task} ({lm_task}) has no validation or test split to evaluate on")
        files = {split: write_split(tmp_out, final, task, split, docs) for split, docs in splits.items()}
        counts[task] = {split: len(docs) for split, docs in splits.items()}
        write_task_yaml(tmp_out / "tasks", prefix, task, files,
                        definition.get("descriptions", {}).get(task) or description)
    for group, tasks in definition["groups"].items():
        write_group(tmp_out / "tasks", f"{prefix}{group}", [prefix + t for t in tasks])
    write_group(tmp_out / "tasks", name, [prefix + g for g in definition["groups"]])
    (tmp_out / "built.json").write_text(json.dumps({"suite": definition, "counts": counts}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp_out, out)
    return counts
