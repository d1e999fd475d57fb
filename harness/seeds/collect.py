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


def collect(tasks_dir: str, names: list[str], per_task_cap: int | None, sample_seed: int) -> tuple[list[dict], dict]:
    """Seeds from the named tasks or groups; a task without a training split is refused."""
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=tasks_dir, include_defaults=False)
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        raise SeedError(f"unknown task or group {unknown} (known: {sorted(tm.all_tasks)})")
    tasks = leaf_tasks(get_task_dict(list(names), tm))
    no_train = sorted(n for n, t in tasks.items() if not t.has_training_docs())
    if no_train:
        raise SeedError(f"tasks without a training split cannot seed: {no_train} (seeds come from TRAIN splits only)")
    records, counts = [], {}
    for name in sorted(tasks):
        task = tasks[name]
        docs = list(task.training_docs())
        order = list(range(len(docs)))
        if per_task_cap and len(docs) > per_task_cap:
            order = sorted(random.Random(f"{sample_seed}:{name}").sample(order, per_task_cap))
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
    return records, counts
