"""Build a suite from lm-eval's own task definitions (evals/paper.yaml): every split of every task, read through
the task's doc_to_text / doc_to_choice / doc_to_target, is written in the suite schema (id, query, choices, gold)
with the same files and lm-eval YAMLs as the offline suite, so that seeds, decontamination, evaluation and the
report treat both alike. lm-eval loads the datasets (the Hugging Face hub, or its cache): it runs on a node that
can reach them.

Groups (mmlu) are flattened into one task of all their subtasks. A blank-filling task whose prompt lm-eval scores
by context (winogrande: doc_to_text gives the answer's index) becomes query + continuations, as in the offline
suite.

Generative tasks (gsm8k, GPQA chain of thought, MMLU-Pro) keep lm-eval's own definition - prompt, few-shot
examples, filters, metrics, any `!function` - by including its YAML; only the data is swapped for a snapshot of
the raw documents (raw/<leaf>/<split>.jsonl) that lm-eval's own process_docs then reads as it would the hub's.
A group's leaves stay lm-eval tasks of their own, under a group named after the suite task; the eval stage scores
them as one task (built.json: `leaves`). The suite schema files beside them (query, answers, answer) feed
decontamination. A split that is both a task's training and its evaluation split (GPQA ships only `train`) is
evaluation data: it is not snapshotted as train, and the task's training split is unset, so nothing seeds from
it and its n-grams are not excused as training data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import yaml

from harness.evaluation.offline_suite import _winogrande, write_group, write_groups, write_split, write_task_yaml
from harness.evaluation.suites import task_settings
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


def _leaves(tm, lm_task) -> list[tuple[str, object]]:
    """(name, task) of the leaves of an lm-eval task or group, or of a list of them (a group's part: AGIEval's
    English multiple-choice tasks without its generative one)."""
    from lm_eval.tasks import get_task_dict

    names = list(lm_task) if isinstance(lm_task, list) else [lm_task]
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        raise SuiteError(f"lm-eval has no task or group {', '.join(map(repr, unknown))}")
    return sorted(leaf_tasks(get_task_dict(names, tm)).items())


def read_task(tm, lm_task) -> tuple[dict[str, list[dict]], str]:
    """({split: docs} of an lm-eval task or group, in the suite schema; what it tests, in words). The subtasks of a
    group are flattened into one task whose documents keep their own subtask and description (seeds read them)."""
    leaves = _leaves(tm, lm_task)
    splits: dict[str, list[dict]] = {}
    for name, task in leaves:
        if task.OUTPUT_TYPE != "multiple_choice":
            raise SuiteError(f"task {name} is {task.OUTPUT_TYPE}: read it with read_generative")
        own = {"subtask": name, "description": describe(task, name)} if len(leaves) > 1 else {}
        for split, method in SPLITS.items():
            if split == "train" and _train_is_eval(task):
                continue
            if getattr(task, f"has_{method.split('_')[0]}_docs")():
                splits.setdefault(split, []).extend({**_normalise(task, name, d), **own}
                                                    for d in getattr(task, method)())
    return splits, describe(leaves[0][1], lm_task) if len(leaves) == 1 else lm_task.replace("_", " ")


def _train_is_eval(task) -> bool:
    c = task.config
    return bool(c.training_split) and c.training_split in (c.validation_split, c.test_split)


def _reference(target) -> tuple[list[str], str]:
    refs = [str(t) for t in target] if isinstance(target, list) else [str(target)]
    return refs, refs[0]


def write_generative(tm, lm_task: str, suite_task: str, prefix: str, tmp_out: Path, final: Path,
                     settings: dict) -> tuple[dict[str, list[dict]], list[str]]:
    """Snapshot a generative lm-eval task or group: per leaf its raw documents and a YAML that includes lm-eval's
    own with the data swapped (and the suite's `settings` - num_fewshot, generation_kwargs... - over it). Returns
    ({split: docs in the suite schema}, the leaves' task names)."""
    leaves = _leaves(tm, lm_task)
    folder = tmp_out / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict]] = {}
    names = []
    for leaf, task in leaves:
        if task.OUTPUT_TYPE != "generate_until":
            raise SuiteError(f"task {lm_task}: its leaf {leaf} is {task.OUTPUT_TYPE}; a suite task is all multiple "
                             f"choice or all generative")
        c = task.config
        own = f"{prefix}{suite_task}" if len(leaves) == 1 else f"{prefix}{suite_task}__{leaf}"
        names.append(own)
        files = {}
        # raw documents once per dataset (MMLU-Pro's subjects are one test split, each leaf filters it)
        ident = json.dumps([c.dataset_path, c.dataset_name, c.dataset_kwargs], sort_keys=True, default=str)
        source = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{c.dataset_path}_{c.dataset_name or 'default'}") + \
            "-" + hashlib.sha1(ident.encode()).hexdigest()[:8]
        for split in sorted({s for s in (c.training_split, c.validation_split, c.test_split, c.fewshot_split)
                             if s}):
            raw = tmp_out / "raw" / source / f"{split}.jsonl"
            if not raw.exists():
                raw.parent.mkdir(parents=True, exist_ok=True)
                task.dataset[split].to_json(str(raw), lines=True, force_ascii=False)
            files[split] = str((final / "raw" / source / f"{split}.jsonl").resolve())
        spec = {"include": str(Path(tm.task_index[leaf].yaml_path).resolve()), "task": own, "dataset_path": "json",
                "dataset_name": None, "dataset_kwargs": {"data_files": files}, **settings}
        if _train_is_eval(task):
            spec["training_split"] = None
        (folder / f"{own}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        sub = {"subtask": leaf} if len(leaves) > 1 else {}
        for split, method in SPLITS.items():
            if split == "train" and _train_is_eval(task):
                continue
            if getattr(task, f"has_{method.split('_')[0]}_docs")():
                for d in getattr(task, method)():
                    refs, answer = _reference(task.doc_to_target(d))
                    splits.setdefault(split, []).append({"query": str(task.doc_to_text(d)), "answers": refs,
                                                         "answer": answer, **sub})
    if len(leaves) > 1:
        write_group(folder, f"{prefix}{suite_task}", names, [])
    return splits, names if len(leaves) > 1 else []


def build(name: str, definition: dict, out: Path, final: Path, include_path: str | None = None) -> dict:
    """Write <out>/data and <out>/tasks for suite `name`; returns {task: {split: count}}."""
    from lm_eval.tasks import TaskManager

    prefix = f"{name}_"
    tm = TaskManager(include_path=include_path or definition.get("include_path"), include_defaults=True)
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    leaves: dict[str, list[str]] = {}  # a generative group's lm-eval name: its leaves (scored as one task)
    filters: dict[str, str] = {}  # a task's filter whose responses are scored (default: lm-eval's first)
    for task, entry in definition["tasks"].items():
        settings = task_settings(entry)
        lm_task = settings.pop("lm_eval")
        settings.pop("executes_code", None)  # the recipe's opt-in is checked at validation
        if settings.get("filter"):
            filters[prefix + task] = settings.pop("filter")
        if settings.pop("output_type", "multiple_choice") == "generate_until":
            splits, group = write_generative(tm, lm_task, task, prefix, tmp_out, final, settings)
            if group:
                leaves[prefix + task] = group
            splits = {split: docs for split, docs in splits.items() if docs}
            for split, docs in splits.items():
                write_split(tmp_out, final, task, split, docs)
        else:
            splits, description = read_task(tm, lm_task)
            splits = {split: docs for split, docs in splits.items() if docs}
            files = {split: write_split(tmp_out, final, task, split, docs) for split, docs in splits.items()}
            write_task_yaml(tmp_out / "tasks", prefix, task, files,
                            definition.get("descriptions", {}).get(task) or description, settings)
        if not set(splits) & {"validation", "test"}:
            raise SuiteError(f"suite {name}: task {task} ({lm_task}) has no validation or test split to evaluate on")
        counts[task] = {split: len(docs) for split, docs in splits.items()}
    write_groups(tmp_out / "tasks", name, definition)
    (tmp_out / "built.json").write_text(json.dumps({"suite": definition, "counts": counts, "leaves": leaves,
                                                    "filters": filters},
                                                   indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp_out, out)
    return counts
