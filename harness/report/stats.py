"""Comparison statistics: per-task and average deltas between arms with 95% confidence intervals from a paired
bootstrap over evaluation items and over training seeds.

For arm a, task t: scores X[a,t] of shape [seeds, items] (the same items for every arm). A replicate resamples the
items of each task (the same draw for both arms: the comparison is paired by item) and the seeds of each arm
(independently: different arms are different models), and recomputes every task's delta and their unweighted
average. The interval is the 2.5th-97.5th percentile of the replicates; a delta is significant when it excludes 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Delta:
    task: str
    estimate: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def _resampled_means(x: np.ndarray, seed_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """Mean over resampled seeds and items for each replicate: x [S, N], seed_idx [B, S], item_idx [B, N] -> [B]."""
    per_item = x[seed_idx].mean(axis=1)  # [B, N]: each item's mean over the resampled seeds
    return np.take_along_axis(per_item, item_idx, axis=1).mean(axis=1)


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n_boot: int = 2000, seed: int = 0,
            level: float = 0.95, chunk: int = 250, groups: dict[str, list[str]] | None = None) -> list[Delta]:
    """Deltas a - b for each task (keys), for the unweighted average of each group of tasks, and for the average
    of all tasks ("average"). a[t], b[t]: [seeds, items]."""
    tasks = sorted(a)
    if sorted(b) != tasks:
        raise ValueError(f"the arms were evaluated on different tasks: {sorted(set(a) ^ set(b))}")
    for t in tasks:
        if a[t].shape[1] != b[t].shape[1]:
            raise ValueError(f"task {t}: {a[t].shape[1]} items in one arm, {b[t].shape[1]} in the other")
    rng = np.random.default_rng(seed)
    sa, sb = a[tasks[0]].shape[0], b[tasks[0]].shape[0]
    reps = {t: [] for t in tasks}
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        ia, ib = rng.integers(0, sa, (m, sa)), rng.integers(0, sb, (m, sb))
        for t in tasks:
            n = a[t].shape[1]
            items = rng.integers(0, n, (m, n))
            reps[t].append(_resampled_means(a[t], ia, items) - _resampled_means(b[t], ib, items))
        done += m
    reps = {t: np.concatenate(v) for t, v in reps.items()}
    point = {t: float(a[t].mean() - b[t].mean()) for t in tasks}
    groups = {g: [t for t in members if t in point] for g, members in (groups or {}).items()}
    groups = {g: m for g, m in groups.items() if m}
    groups["average"] = tasks
    for g, members in groups.items():
        reps[g] = np.mean([reps[t] for t in members], axis=0)
        point[g] = float(np.mean([point[t] for t in members]))
    q = (1 - level) / 2
    return [Delta(t, point[t], float(np.quantile(reps[t], q)), float(np.quantile(reps[t], 1 - q)))
            for t in tasks + list(groups)]
