"""Seeds: the TRAIN splits of lm-eval tasks, rendered through each task's own doc_to_text / doc_to_choice /
doc_to_target and normalised into one schema. Validation and test splits are never read here.

Schema (one JSON object per line): seed_id, task, subtask, question, context (or null), choices (list or null),
answer_index (or null), answer_text, prompt (the task's own rendering), split ("train").
"""

from __future__ import annotations

import random
import re


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


def _split_prompt(prompt: str) -> tuple[str | None, str]:
    """(context, question) from a rendered prompt: a passage before "Question:" is context; answer cues go."""
    text = re.sub(r"\s*Answer:\s*$", "", prompt.strip())
    if "\nQuestion:" in text:
        context, question = text.rsplit("\nQuestion:", 1)
        return context.strip() or None, question.strip()
    return None, re.sub(r"^(Question|Goal):\s*", "", text).strip()


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


def collect(tasks_dir: str, names: list[str], per_task_cap: int | None, sample_seed: int,
            per_group_cap: int | None = None, stratify: str = "equal") -> tuple[list[dict], dict]:
    """Seeds from the named tasks or groups: at most `per_task_cap` from each task, and at most `per_group_cap` from
    each named group, stratified across its subtasks (see `allocate`). A task without a training split is refused."""
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
    for leaves in groups.values():  # a task named twice (alone and in a group) gets the larger quota
        sizes = {n: min(len(docs_of[n]), per_task_cap or len(docs_of[n])) for n in leaves}
        for leaf, q in allocate(sizes, per_group_cap if len(leaves) > 1 else None, stratify).items():
            quota[leaf] = max(q, quota.get(leaf, 0))
    records, counts = [], {}
    for name in sorted(tasks):
        task, docs = tasks[name], docs_of[name]
        order = list(range(len(docs)))
        if quota[name] < len(docs):
            order = sorted(random.Random(f"{sample_seed}:{name}").sample(order, quota[name]))
        for i in order:
            doc = docs[i]
            prompt = task.doc_to_text(doc)
            choices = task.doc_to_choice(doc) if task.OUTPUT_TYPE == "multiple_choice" else None
            target = task.doc_to_target(doc)
            if choices is not None:
                index = int(target) if not isinstance(target, str) else choices.index(target)
                answer = choices[index]
            else:
                index, answer = None, str(target)
            context, question = _split_prompt(str(prompt))
            records.append({"seed_id": f"{name}/train/{i}", "task": name, "subtask": name, "question": question,
                            "context": context, "choices": choices, "answer_index": index, "answer_text": answer,
                            "prompt": prompt, "split": "train"})
        counts[name] = {"train_docs": len(docs), "seeds": len(order)}
    per_group = {g: {"subtasks": len(leaves), "seeds": sum(counts[n]["seeds"] for n in leaves)}
                 for g, leaves in groups.items()}
    return records, {"per_task": counts, "per_group": per_group}
