"""`harness report` on a store written by hand in the stages' own formats - train and eval stages published
through Store.publish, per-item samples made by the eval stage's record functions - so that the tables' marks, the
controls' tables and the refusals are checked in seconds, without training anything."""

import json
import re

import numpy as np
import pytest
from conftest import base_recipe, write_recipe

from harness import recipe as rcp
from harness.plan import Plan, build
from harness.report.build import metric_info
from harness.stages.evaluate import item_record, summarise
from harness.store import Store

# each arm's chance of answering an item right: on arc_easy the arms differ far beyond the noise of 120 items and
# 3 seeds (mixed better than base, ctrl worse), on sciq not at all (differences are noise)
P_RIGHT = {"base": {"offline_arc_easy": 0.4, "offline_sciq": 0.5},
           "mixed": {"offline_arc_easy": 0.8, "offline_sciq": 0.5},
           "ctrl": {"offline_arc_easy": 0.2, "offline_sciq": 0.5}}
N_ITEMS = 120


def _publish(plan: Plan, spec, result: dict, files: dict[str, str]) -> None:
    """A stage output as the runner publishes it: its files, then the manifest, then the rename."""
    partial = plan.store.partial_dir(spec.kind, spec.digest)
    for name, text in files.items():
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        (partial / name).write_text(text)
    plan.store.publish(partial, plan.dir(spec), {"stage": spec.id, "kind": spec.kind, "digest": spec.digest,
                                                 "config": spec.config, "result": result,
                                                 "timing": {"seconds": 60.0}})


def make_store(tmp) -> Plan:
    """Three arms (baseline `base`, control `ctrl`) x 3 seeds, trained and evaluated on two multiple-choice tasks
    of the offline suite: every train and eval stage published, nothing else."""
    r = base_recipe(tmp, seeds=[1, 2, 3])
    r["arms"].append({"name": "ctrl", "mix": {"web": 0.5, "qa": 0.5}})
    r["report"] = {"baseline": "base", "controls": ["ctrl"], "bootstrap": 300}
    r["eval"] = {"suite": "offline", "tasks": sorted(P_RIGHT["base"])}
    recipe = rcp.load(write_recipe(tmp / "r.yaml", r), [])
    plan = build(recipe, Store(tmp / "runs"))
    plan.save(recipe)
    rng = np.random.default_rng(0)
    info = {"output_type": "multiple_choice", "metrics": ["acc", "acc_norm"], "primary": "acc"}
    for arm in recipe.arms:
        for seed in recipe.seeds:
            tokens = {s: share * recipe.data.tokens for s, share in arm.mix.items() if share}
            curve = "".join(json.dumps({"tokens": k * 1000, "loss": 5.0 - k}) + "\n" for k in range(4))
            _publish(plan, plan.by_id(f"train/{arm.name}/seed{seed}"), {"tokens_by_source": tokens},
                     {"metrics.jsonl": curve})
            files, tasks = {}, {}
            for task, p in P_RIGHT[arm.name].items():
                right = rng.random(N_ITEMS) < p
                recs = [item_record({"doc_id": i, "target": 0, "acc": float(ok), "acc_norm": float(ok),
                                     "filtered_resps": [[-1.0 if ok else -3.0, False]] + [[-2.0, False]] * 3},
                                    {"id": f"{task}-{i}", "choices": ["aa", "bb", "cc", "dd"]})
                        for i, ok in enumerate(right)]
                files[f"samples/{task}.jsonl"] = "".join(json.dumps(x) + "\n" for x in recs)
                tasks[task] = summarise(recs, info)
            _publish(plan, plan.by_id(f"eval/{arm.name}/seed{seed}"), {"tasks": tasks, "samples": "samples"}, files)
    return plan


def _md_rows(md: str) -> dict[str, dict[str, str]]:
    """A Markdown table's cells: row name (without its tag) -> column -> cell."""
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].split(" (")[0]] = dict(zip(head, cells[1:]))
    return rows


def _tex_rows(tex: str, columns: list[str]) -> dict[str, dict[str, str]]:
    rows = {}
    for line in tex.splitlines():
        if " & " in line and not line.startswith("Arm &"):
            cells = line.removesuffix(r" \\").split(" & ")
            rows[cells[0].replace(r"\_", "_")] = dict(zip(columns, cells[1:]))
    return rows


CELL = re.compile(r"(\S+) \((\*\*|_|)([+-]\d+\.\d+)\2 \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\]\)")


def test_significance_marks_and_controls_tables(tmp_path, cli):
    make_store(tmp_path)
    code, out = cli("report", "toy", "--store", tmp_path / "runs")
    assert code == 0, out
    rep = tmp_path / "runs" / "toy" / "report"
    results = json.loads((rep / "results.json").read_text())
    assert results["controls"] == ["ctrl"] and results["metrics"] == ["acc", "acc_norm", "gold_bpb"]
    columns = [c.removeprefix("offline_") for c in results["columns"]]
    assert columns == ["arc_easy", "sciq", "seeded", "held_out", "average"]
    marks = set()
    for metric in results["metrics"]:
        higher = metric_info(metric)[1]
        for ref in ("base", "ctrl"):
            md, tex = (rep / f"{metric}_vs_{ref}.md").read_text(), (rep / f"{metric}_vs_{ref}.tex").read_text()
            assert f"against `{ref}`" in md and f"| {ref} (reference) |" in md and f"against {ref}:" in tex
            md_rows, tex_rows = _md_rows(md), _tex_rows(tex, columns)
            comps = results["comparisons"][f"{metric}_vs_{ref}"]
            assert set(comps) == {"base", "mixed", "ctrl"} - {ref} and set(md_rows) == set(tex_rows) == set(P_RIGHT)
            for arm, per_column in comps.items():
                assert len(per_column) == len(columns)
                for col, d in per_column.items():
                    short = col.removeprefix("offline_")
                    cell = CELL.fullmatch(md_rows[arm][short])
                    assert cell, md_rows[arm][short]
                    better = (d["delta"] > 0) == higher
                    want = ("**" if better else "_") if d["significant"] else ""
                    assert cell.group(2) == want, (metric, ref, arm, col, d, md_rows[arm][short])
                    assert d["significant"] == (d["low"] > 0 or d["high"] < 0)
                    assert (r"$^\dagger$" in tex_rows[arm][short]) == d["significant"], tex_rows[arm][short]
                    marks.add(want)
            assert "*" not in "".join(md_rows[ref].values()) and r"\dagger" not in "".join(tex_rows[ref].values())
    assert marks == {"**", "_", ""}, "the data give significantly better, significantly worse and unclear cells"
    # lower is better for bits per byte: mixed's lower bpb on arc_easy is bold, ctrl's higher one italic
    bpb = _md_rows((rep / "gold_bpb_vs_base.md").read_text())
    assert bpb["mixed"]["arc_easy"].split()[1].startswith("(**-") and bpb["ctrl"]["arc_easy"].split()[1].startswith("(_+")

    # the control's tables: every other arm against `ctrl`, the baseline arm an ordinary row (not a base model)
    md = (rep / "acc_vs_ctrl.md").read_text()
    assert [line.split(" |")[0] for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:] == \
        ["| ctrl (reference)", "| base", "| mixed"], md
    values, vs_ctrl = results["values"]["acc"], results["comparisons"]["acc_vs_ctrl"]
    for arm in ("base", "mixed"):
        assert vs_ctrl[arm]["average"]["delta"] == pytest.approx(values[arm]["average"] - values["ctrl"]["average"])
    assert vs_ctrl["mixed"]["offline_arc_easy"]["significant"] and vs_ctrl["mixed"]["offline_arc_easy"]["delta"] > 0
    csv_text = (rep / "comparisons.csv").read_text()
    assert "acc,mixed,ctrl,arc_easy," in csv_text and "acc,base,ctrl,average," in csv_text
    assert "### accuracy (higher is better), against `ctrl`" in (rep / "report.md").read_text()


def _samples(plan: Plan, arm: str, seed: int, task: str):
    return plan.dir(plan.by_id(f"eval/{arm}/seed{seed}")) / "samples" / f"{task}.jsonl"


def _another_last_item(plan: Plan, arm: str, seed: int) -> None:  # another sciq item in place of the last one
    path = _samples(plan, arm, seed, "offline_sciq")
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[-1]["doc_id"] = 999
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _other_items(plan: Plan) -> None:  # seed 2 of `mixed` only
    _another_last_item(plan, "mixed", 2)


def _seed_without_a_task(plan: Plan) -> None:
    _samples(plan, "mixed", 3, "offline_sciq").unlink()


def _arm_without_a_task(plan: Plan) -> None:
    for seed in (1, 2, 3):
        _samples(plan, "ctrl", seed, "offline_sciq").unlink()


def _arm_on_other_items(plan: Plan) -> None:  # every seed of `ctrl`: its seeds agree, the arms do not
    for seed in (1, 2, 3):
        _another_last_item(plan, "ctrl", seed)


@pytest.mark.parametrize("damage, message", [
    (_other_items, "arm 'mixed' task offline_sciq: seeds were evaluated on different items"),
    (_seed_without_a_task, "arm 'mixed': seed 3 was evaluated on other tasks (['offline_sciq'])"),
    (_arm_without_a_task, "arm 'ctrl' and arm 'base' were evaluated on different tasks: ['offline_sciq']"),
    (_arm_on_other_items, "arm 'ctrl' and arm 'base' were evaluated on different items of task offline_sciq"),
], ids=["items", "seed-tasks", "arm-tasks", "arm-items"])
def test_report_refuses_results_that_do_not_compare(tmp_path, cli, damage, message):
    damage(make_store(tmp_path))
    code, out = cli("report", "toy", "--store", tmp_path / "runs")
    assert code == 2 and message in " ".join(out.split()), out[-3000:]
    assert not (tmp_path / "runs" / "toy" / "report").exists(), "no partial report"
