"""Seeds: the TRAIN splits of lm-eval tasks, rendered through each task's own doc_to_text / doc_to_choice /
doc_to_target and normalised into one schema. Validation and test splits are never read here.

Schema (one JSON object per line): seed_id, task, subtask, description (what the task tests, in words), question,
context (or null), choices (option texts, or null), answer_index (or null), answer_text (always the answer itself,
never a letter), explanation (where the task has a worked solution), prompt (the task's own rendering), split
("train").
"""

from __future__ import annotations

import random
import re
import tempfile
from pathlib import Path

from harness.evaluation.offline_suite import zero_shot_view
from harness.seeds.normalise import NormaliseError, normalise


class SeedError(ValueError):
    pass


def leaf_tasks(task_dict) -> dict:
    """{name: task} of the leaves of lm-eval's nested task dict (groups flattened)."""
    out = {}
    for key, val in task_dict.items():
        if isinstance(val, dict):
            out.update(leaf_tasks(val))
        else:
            out[getattr(key, "group_name", key) if not isinstance(key, str) else key] = val
    return out


_FILE_BUILDERS = {"json", "arrow", "parquet", "csv", "text"}


def describe(task, name: str) -> str:
    """What a task tests, in words, for the generator's prompt: the task's own `metadata.description` (the suites
    write one), else the subject of a description such as MMLU's "... (with answers) about anatomy.", else its name
    and dataset."""
    cfg = task.config
    meta = cfg.metadata if isinstance(cfg.metadata, dict) else {}
    if meta.get("description"):
        return str(meta["description"])
    m = re.search(r"\babout (.+?)\.?\s*$", (cfg.description or "").strip())
    if m:
        return m.group(1).replace("_", " ")
    words = (getattr(cfg, "task_alias", None) or name).replace("_", " ")
    path = cfg.dataset_path or ""
    if path and path not in _FILE_BUILDERS:
        return f"{words} ({path}{'/' + cfg.dataset_name if cfg.dataset_name else ''})"
    return words


def seed_record(task, name: str, doc: dict, i: int) -> dict:
    """One train document of `task` in the seed schema (see harness.seeds.normalise)."""
    prompt = task.doc_to_text(doc)
    mc = task.OUTPUT_TYPE == "multiple_choice"
    try:
        item = normalise(prompt, task.doc_to_choice(doc) if mc else None, task.doc_to_target(doc), task.OUTPUT_TYPE)
    except NormaliseError as e:
        raise SeedError(f"task {name}, train document {i}: {e}") from None
    # a suite snapshot of a group records each document's own subtask and description
    return {"seed_id": f"{name}/train/{i}", "task": name, "subtask": doc.get("subtask") or name,
            "description": doc.get("description") or describe(task, name), **item, "prompt": prompt,
            "split": "train"}


def allocate(sizes: dict[str, int], cap: int | None, how: str) -> dict[str, int]:
    """Seeds per subtask when `cap` seeds are drawn from a group whose subtasks offer `sizes`, stratified.

    equal: the same number from every subtask; a subtask with fewer train docs gives its unused share to the others.
    proportional: in proportion to the subtasks' train sizes (largest remainders get the rounding)."""
    if cap is None or cap >= sum(sizes.values()):
        return dict(sizes)
    if how == "proportional":
        total = sum(sizes.values())
        exact = {n: cap * s / total for n, s in sizes.items()}
        out = {n: int(v) for n, v in exact.items()}
        for n in sorted(exact, key=lambda n: (out[n] - exact[n], n))[:cap - sum(out.values())]:
            out[n] += 1
        return out
    out, left = {}, cap
    names = sorted(sizes, key=lambda n: (sizes[n], n))  # smallest first, so their unused share goes to the rest
    for i, n in enumerate(names):
        out[n] = min(sizes[n], left // (len(names) - i))
        left -= out[n]
    return out


def _category_quota(categories: dict, groups: dict, sizes: dict[str, int]) -> tuple[dict, dict]:
    """({leaf: seeds}, {leaf: category}): each category's budget spread over its tasks or groups (by `allocate`,
    on what each offers), then a group's share over its subtasks the same way."""
    quota, category_of = {}, {}
    for cat, c in sorted(categories.items()):
        offer = {entry: sum(sizes[leaf] for leaf in groups[entry]) for entry in c["tasks"]}
        for entry, share in allocate(offer, c.get("seeds"), c.get("stratify", "equal")).items():
            for leaf, q in allocate({leaf: sizes[leaf] for leaf in groups[entry]}, share,
                                    c.get("stratify", "equal")).items():
                if leaf in category_of and category_of[leaf] != cat:
                    raise SeedError(f"task {leaf} is in categories {category_of[leaf]} and {cat}: a task seeds one")
                quota[leaf], category_of[leaf] = q, cat
    return quota, category_of


def collect(tasks_dir: str, names: list[str], per_task_cap: int | None, sample_seed: int,
            per_group_cap: int | None = None, stratify: str = "equal",
            categories: dict | None = None) -> tuple[list[dict], dict]:
    """Seeds from the named tasks or groups: at most `per_task_cap` from each task, and at most `per_group_cap` from
    each named group, stratified across its subtasks (see `allocate`). With `categories` ({name: {tasks, seeds,
    stratify}}) each category draws its own budget, stratified within it, and its seeds carry its name. A task
    without a training split is refused."""
    with tempfile.TemporaryDirectory(prefix="tasks-") as view:  # seeds take no shots: no few-shot sampler
        return _collect(str(zero_shot_view(Path(tasks_dir), Path(view) / "tasks", 0)), names, per_task_cap,
                        sample_seed, per_group_cap, stratify, categories)


def _collect(tasks_dir: str, names: list[str], per_task_cap: int | None, sample_seed: int,
             per_group_cap: int | None, stratify: str, categories: dict | None) -> tuple[list[dict], dict]:
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=tasks_dir, include_defaults=False)
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        raise SeedError(f"unknown task or group {unknown} (known: {sorted(tm.all_tasks)})")
    groups = {n: leaf_tasks(get_task_dict([n], tm)) for n in names}
    tasks = {leaf: t for g in groups.values() for leaf, t in g.items()}
    no_train = sorted(n for n, t in tasks.items() if not t.has_training_docs())
    if no_train:
        raise SeedError(f"tasks without a training split cannot seed: {no_train} (seeds come from TRAIN splits only)")
    docs_of = {n: list(t.training_docs()) for n, t in tasks.items()}
    quota: dict[str, int] = {}
    category_of: dict[str, str] = {}
    if categories:
        quota, category_of = _category_quota(categories, groups, {n: min(len(d), per_task_cap or len(d))
                                                                  for n, d in docs_of.items()})
    for leaves in ([] if categories else groups.values()):  # a task named alone and in a group: the larger quota
        sizes = {n: min(len(docs_of[n]), per_task_cap or len(docs_of[n])) for n in leaves}
        for leaf, q in allocate(sizes, per_group_cap if len(leaves) > 1 else None, stratify).items():
            quota[leaf] = max(q, quota.get(leaf, 0))
    records, counts = [], {}
    for name in sorted(tasks):
        task, docs = tasks[name], docs_of[name]
        order = list(range(len(docs)))
        if quota[name] < len(docs):
            order = sorted(random.Random(f"{sample_seed}:{name}").sample(order, quota[name]))
        own = {"category": category_of[name]} if categories else {}
        records.extend({**seed_record(task, name, docs[i], i), **own} for i in order)
        counts[name] = {"train_docs": len(docs), "seeds": len(order)}
    per_group = {g: {"subtasks": len(leaves), "seeds": sum(counts[n]["seeds"] for n in leaves)}
                 for g, leaves in groups.items()}
    out = {"per_task": counts, "per_group": per_group}
    if categories:
        out["per_category"] = {cat: {"budget": c.get("seeds"), "tasks": len(c["tasks"]),
                                     "seeds": sum(counts[t]["seeds"] for t in counts if category_of[t] == cat)}
                               for cat, c in sorted(categories.items())}
    return records, out
