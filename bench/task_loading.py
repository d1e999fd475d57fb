"""Making an evaluation's lm-eval tasks: the suite's task folder as built (what lm-eval's TaskManager gives
anyone who points it there) against the zero-shot view the eval and seeds stages load
(harness.evaluation.offline_suite.zero_shot_view: no few-shot sampler for tasks that take no shots), in the same run.

    python bench/task_loading.py [--tasks offline_seeded offline_held_out] [--repeat 3]

The default tasks are the quickstart's evaluation (11 tasks, ~160k train rows). The suite comes from
`harness run recipes/quickstart.yaml --only suite`. Timed: making the TaskManager and loading the tasks (the view's
side includes writing the view). Both must give every task the same evaluation documents and the same zero-shot
contexts, choices and targets (checked on every evaluated document): the run fails otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness.evaluation.offline_suite import zero_shot_view  # noqa: E402
from quickstart_suite import suite_dir  # noqa: E402


def load(tasks_dir: Path, names: list[str]) -> dict:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir), include_defaults=False).load(names)["tasks"]


def what_is_asked(task) -> list[tuple]:
    rows = []
    for doc in task.eval_docs:
        rows.append((task.fewshot_context(doc, 0), task.doc_to_target(doc),
                     task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["offline_seeded", "offline_held_out"])
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    tasks_dir = suite_dir() / "tasks"
    import lm_eval.models  # noqa: F401  (imports outside the timings)

    load(tasks_dir, a.tasks)  # datasets' Arrow cache written once, for both sides
    times = {"as built": [], "zero-shot view": []}
    for _ in range(a.repeat):
        t = time.perf_counter()
        built = load(tasks_dir, a.tasks)
        times["as built"].append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            view = load(zero_shot_view(tasks_dir, Path(tmp) / "tasks", None), a.tasks)
            times["zero-shot view"].append(time.perf_counter() - t)
    assert sorted(built) == sorted(view), (sorted(built), sorted(view))
    rows = 0
    for name in sorted(built):
        same = what_is_asked(built[name]) == what_is_asked(view[name])
        assert same, f"{name}: the view asks something else"
        rows += len(built[name].eval_docs)
    train = sum(len(t.dataset["train"]) for t in built.values() if "train" in t.dataset)
    print(f"{len(built)} tasks, {train:,} train rows, {rows:,} evaluation documents compared (identical)")
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"  {k:15s} {v:7.2f} s (best of {a.repeat})")
    print(f"ratio (as built / zero-shot view): {best['as built'] / best['zero-shot view']:.1f}x")


if __name__ == "__main__":
    main()
