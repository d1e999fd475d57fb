"""Which seeds a synthetic set draws: its tasks, or named categories of tasks with budgets of their own (the method
pools knowledge-intensive and reasoning-intensive tasks, each with its own budget). The dataclass and its checks,
beside the code they configure; recipe.py composes them into a synthetic set's section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

STRATIFY = ("equal", "proportional")
DEFAULT_TASKS = ["offline_seeded"]


@dataclass
class CategoryConfig:
    """A named category: its tasks or groups and the seeds it draws in all (None: every seed its tasks offer),
    spread over its tasks (equal shares, or in proportion to their train sizes), then within a group over its
    subtasks."""

    tasks: list[str] = field(default_factory=list)
    seeds: Optional[int] = None
    stratify: str = "equal"


def seed_tasks(tasks: list[str], categories: dict[str, CategoryConfig]) -> list[str]:
    """Every task or group a set seeds from: its categories' tasks, else its tasks (default: the offline suite's)."""
    if categories:
        return [t for _, c in sorted(categories.items()) for t in c.tasks]
    return list(tasks) or list(DEFAULT_TASKS)


def selection(tasks: list[str], categories: dict[str, CategoryConfig], per_task_cap, per_group_cap, stratify: str,
              seed: int) -> dict:
    """The seeds stage's configuration (hashed): absent settings stay absent, so earlier seed sets keep their hash."""
    sel = {"tasks": seed_tasks(tasks, categories), "per_task_cap": per_task_cap,
           "sample_seed": seed}
    if per_group_cap is not None:
        sel.update(per_group_cap=per_group_cap, stratify=stratify)
    if categories:
        sel["categories"] = {n: {"tasks": list(c.tasks), "seeds": c.seeds, "stratify": c.stratify}
                             for n, c in sorted(categories.items())}
    return sel


def validate(where: str, tasks: list[str], categories: dict[str, CategoryConfig],
             bad: Callable[[str, str], None]) -> None:
    if tasks and categories:
        bad(f"{where}.categories", "give the tasks or the categories (each with its tasks), not both")
    owner: dict[str, str] = {}
    for name, c in categories.items():
        if not c.tasks:
            bad(f"{where}.categories.{name}.tasks", "a category needs at least one task or group")
        if c.seeds is not None and c.seeds < 1:
            bad(f"{where}.categories.{name}.seeds", f"must be at least 1 (or null: all), got {c.seeds}")
        if c.stratify not in STRATIFY:
            bad(f"{where}.categories.{name}.stratify", f"unknown stratification '{c.stratify}' ({', '.join(STRATIFY)})")
        for t in c.tasks:
            if t in owner:
                bad(f"{where}.categories.{name}.tasks", f"'{t}' is also in category '{owner[t]}': a task seeds one "
                                                        f"category")
            owner.setdefault(t, name)
