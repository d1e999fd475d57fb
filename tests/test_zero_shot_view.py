"""The zero-shot view of a suite's task folder (harness.evaluation.offline_suite.zero_shot_view) that the eval and
seeds stages load: a task that takes no shots loses lm-eval's few-shot sampler (built from its whole few-shot split
when the task is made) and nothing else; a task that takes shots keeps it, by lm-eval's rule for num_fewshot."""

import os

import yaml

from harness.evaluation.offline_suite import zero_shot_view
from harness.plan import Plan

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _load(tasks_dir, names):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir), include_defaults=False).load(names)["tasks"]


def _asked(task, shots: int, n: int = 25) -> list:
    task.set_fewshot_seed(0)
    docs = list(task.eval_docs)[:n]
    return [(task.fewshot_context(d, shots), task.doc_to_target(d),
             task.doc_to_choice(d) if task.config.doc_to_choice is not None else None) for d in docs]


def test_the_view_asks_what_the_suite_asks_without_unused_samplers(suite_store, tmp_path):
    plan = Plan.load(suite_store / "runs" / "toy" / "plan.json")
    tasks_dir = plan.dir(plan.by_id("suite")) / "suite" / "tasks"
    specs = {p.name: yaml.safe_load(p.read_text()) for p in tasks_dir.glob("*.yaml")}
    own = {s["task"]: s.get("num_fewshot") for s in specs.values() if "task" in s and isinstance(s["task"], str)}
    # zero-shot with a train split (the few-shot split), zero-shot without one (lm-eval falls back to validation
    # docs), a generative task with its own 3 shots from its validation split
    names = ["offline_arc_easy", "offline_mmlu", "offline_arithmetic"]
    assert own["offline_arithmetic"] == 3 and not own["offline_arc_easy"] and not own["offline_mmlu"]

    view_dir = zero_shot_view(tasks_dir, tmp_path / "view", None)
    built, view = _load(tasks_dir, names), _load(view_dir, names)
    assert sorted(built) == sorted(view) == sorted(names)
    for name in names:
        b, v = built[name], view[name]
        shots = own[name] or 0
        if shots:  # its own shots: the sampler and the few-shot contexts as built
            assert len(v.sampler.df) == len(b.sampler.df) > 0, name
        else:
            assert len(b.sampler.df) > 0 and v.sampler.df == [], name
        assert _asked(b, shots) == _asked(v, shots), name
    # only the zero-shot tasks' files changed, and only in their few-shot settings
    for fname, spec in specs.items():
        new = yaml.safe_load((view_dir / fname).read_text())
        if isinstance(spec.get("task"), str) and not spec.get("num_fewshot"):
            assert {k: v for k, v in new.items() if k != "fewshot_config"} == \
                {k: v for k, v in spec.items() if k != "fewshot_split"} and new["fewshot_config"] == {"samples": []}
        else:
            assert (view_dir / fname).read_text() == (tasks_dir / fname).read_text(), fname

    # num_fewshot given: every task takes that many (lm-eval keeps 0 only for a task whose own is 0)
    two = zero_shot_view(tasks_dir, tmp_path / "two", 2)
    assert all((two / f).read_text() == (tasks_dir / f).read_text() for f in specs)
    zero = zero_shot_view(tasks_dir, tmp_path / "zero", 0)
    assert all("fewshot_split" not in s and s["fewshot_config"] == {"samples": []}
               for s in (yaml.safe_load((zero / f).read_text()) for f in specs) if isinstance(s.get("task"), str))

    # what is not a plain task mapping is copied as it is: lm-eval's !function tags, other files
    odd = tmp_path / "odd"
    odd.mkdir()
    tagged = "task: t\nfewshot_split: train\nprocess_docs: !function utils.process\n"
    (odd / "t.yaml").write_text(tagged)
    (odd / "utils.py").write_text("def process(d):\n    return d\n")
    out = zero_shot_view(odd, tmp_path / "odd-view", None)
    assert (out / "t.yaml").read_text() == tagged and (out / "utils.py").is_file()
