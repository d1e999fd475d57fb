"""`harness report`: collect every arm's per-item evaluation results, compare each arm with the baseline and the
controls, and write paper-style tables (Markdown, LaTeX), CSV/JSON and plots into runs/<experiment>/report/.

Refuses, with a message, what would make a wrong table: a missing evaluation, arms with unequal numbers of seeds,
a task or an item set that differs between arms.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from harness.plan import Plan
from harness.report import contamination, stats

# metric -> (label, higher is better, scale for display)
METRICS = {"acc": ("accuracy", True, 100.0), "acc_norm": ("length-normalised accuracy", True, 100.0),
           "gold_bpb": ("bits per byte of the correct answer", False, 1.0)}


SUITES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "evals").glob("*.yaml"))


class ReportError(ValueError):
    pass


@dataclass
class ArmData:
    name: str
    seeds: list[int]
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # metric -> task -> [seeds, items]
    tokens_by_source: dict[str, float] = field(default_factory=dict)  # mean over seeds
    evaluated: dict[str, set] = field(default_factory=dict)  # task -> ids of the evaluated items
    mix: dict[str, float] = field(default_factory=dict)


def _short(task: str) -> str:
    """offline_arc_easy -> arc_easy: a suite's tasks are named <suite>_<task>."""
    for suite in SUITES:
        if task.startswith(suite + "_"):
            return task[len(suite) + 1:]
    return task


def collect(plan: Plan, recipe: dict) -> dict[str, ArmData]:
    arms: dict[str, ArmData] = {}
    problems = []
    for arm in recipe["arms"]:
        data = ArmData(arm["name"], list(recipe["seeds"]), mix=dict(arm["mix"]))
        per_seed: list[dict[str, list[dict]]] = []
        for seed in recipe["seeds"]:
            sid = f"eval/{arm['name']}/seed{seed}"
            spec = plan.by_id(sid)
            if not plan.is_cached(spec):
                problems.append(f"arm '{arm['name']}' seed {seed}: no evaluation yet (stage {sid} has not run)")
                continue
            folder = plan.dir(spec) / "samples"
            per_seed.append({f.stem: [json.loads(l) for l in f.read_text().splitlines()]
                             for f in sorted(folder.glob("*.jsonl"))})
            tr = plan.by_id(f"train/{arm['name']}/seed{seed}")
            for src, n in plan.store.manifest(tr.kind, tr.digest)["result"]["tokens_by_source"].items():
                data.tokens_by_source[src] = data.tokens_by_source.get(src, 0.0) + n / len(recipe["seeds"])
        if len(per_seed) != len(recipe["seeds"]):
            continue
        tasks = set(per_seed[0])
        for k, s in enumerate(per_seed[1:], 1):
            if set(s) != tasks:
                problems.append(f"arm '{arm['name']}': seed {recipe['seeds'][k]} was evaluated on other tasks "
                                f"({sorted(set(s) ^ tasks)})")
        for metric in METRICS:
            data.scores[metric] = {}
            for t in sorted(tasks):
                ids = [r["doc_id"] for r in per_seed[0][t]]
                if any([r["doc_id"] for r in s[t]] != ids for s in per_seed):
                    problems.append(f"arm '{arm['name']}' task {t}: seeds were evaluated on different items")
                    continue
                data.scores[metric][t] = np.array([[r[metric] for r in s[t]] for s in per_seed], dtype=np.float64)
                data.evaluated[t] = {r["id"] for r in per_seed[0][t] if r.get("id")}
        arms[arm["name"]] = data
    if problems:
        raise ReportError("cannot build the report:\n  " + "\n  ".join(problems))
    ref_tasks = None
    for a in arms.values():
        tasks = set(a.scores["acc"])
        if ref_tasks is None:
            ref_tasks, ref_arm = tasks, a.name
        elif tasks != ref_tasks:
            raise ReportError(f"arm '{a.name}' and arm '{ref_arm}' were evaluated on different tasks: "
                              f"{sorted(tasks ^ ref_tasks)}")
    return arms


def _cell(value: float, delta: stats.Delta | None, scale: float, higher: bool) -> tuple[str, str]:
    """(markdown, latex) text of one cell: the arm's value, and for a compared arm its delta and interval."""
    v = f"{value * scale:.2f}" if scale != 1 else f"{value:.4f}"
    if delta is None:
        return v, v
    fmt = (lambda x: f"{x * scale:+.2f}") if scale != 1 else (lambda x: f"{x:+.4f}")
    better = (delta.estimate > 0) == higher
    mark = ("**" if better else "_") if delta.significant else ""
    md = f"{v} ({mark}{fmt(delta.estimate)}{mark} [{fmt(delta.low)}, {fmt(delta.high)}])"
    tex_delta = f"{fmt(delta.estimate)}" + (r"$^\dagger$" if delta.significant else "")
    tex = f"{v} \\scriptsize({tex_delta} [{fmt(delta.low)}, {fmt(delta.high)}])"
    return md, tex


def build(plan: Plan, recipe: dict, out: Path, n_boot: int = 2000) -> dict:
    rep = recipe.get("report") or {}
    baseline = rep.get("baseline", "baseline")
    controls = [c for c in rep.get("controls", []) if c != baseline]
    names = [a["name"] for a in recipe["arms"]]
    for who in [baseline, *controls]:
        if who not in names:
            raise ReportError(f"report: no arm named '{who}' (arms: {', '.join(names)})")
    arms = collect(plan, recipe)
    suite = yaml.safe_load((Path(__file__).resolve().parents[2] / "evals" / f"{recipe['eval']['suite']}.yaml")
                           .read_text())
    prefix = recipe["eval"]["suite"] + "_"
    groups = {g: [prefix + t for t in ts] for g, ts in suite.get("groups", {}).items()}
    tasks = sorted(arms[baseline].scores["acc"])
    columns = tasks + [g for g in groups if any(t in tasks for t in groups[g])] + ["average"]
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"experiment": plan.experiment, "seeds": recipe["seeds"], "baseline": baseline,
                     "controls": controls, "columns": columns, "comparisons": {}, "values": {}, "tokens": {}}
    tables_md, rows_csv = [], []
    for metric, (label, higher, scale) in METRICS.items():
        values = {}
        for a in arms.values():
            per_task = {t: float(a.scores[metric][t].mean()) for t in tasks}
            for g, members in groups.items():
                ms = [per_task[t] for t in members if t in per_task]
                if ms:
                    per_task[g] = float(np.mean(ms))
            per_task["average"] = float(np.mean([per_task[t] for t in tasks]))
            values[a.name] = per_task
        results["values"][metric] = values
        for ref in [baseline, *controls]:
            deltas = {}
            for a in arms.values():
                if a.name == ref:
                    continue
                ds = stats.compare(a.scores[metric], arms[ref].scores[metric], n_boot=n_boot, groups=groups)
                deltas[a.name] = {d.task: d for d in ds}
                for d in ds:
                    rows_csv.append({"metric": metric, "arm": a.name, "reference": ref, "task": _short(d.task),
                                     "value": values[a.name][d.task], "reference_value": values[ref][d.task],
                                     "delta": d.estimate, "ci_low": d.low, "ci_high": d.high,
                                     "significant": d.significant})
            results["comparisons"][f"{metric}_vs_{ref}"] = {
                arm: {t: {"delta": d.estimate, "low": d.low, "high": d.high, "significant": d.significant}
                      for t, d in ds_.items()} for arm, ds_ in deltas.items()}
            md, tex = _tables(metric, label, higher, scale, ref, arms, columns, values, deltas, len(recipe["seeds"]))
            stem = f"{metric}_vs_{ref}"
            (out / f"{stem}.md").write_text(md)
            (out / f"{stem}.tex").write_text(tex)
            tables_md.append(md)
    for a in arms.values():
        total = sum(a.tokens_by_source.values()) or 1.0
        results["tokens"][a.name] = {s: {"tokens": n, "share": n / total} for s, n in a.tokens_by_source.items()}
    tokens_md = _tokens_table(arms)
    (out / "tokens.md").write_text(tokens_md)
    con = contamination.collect(plan, recipe, {a.name: a.evaluated for a in arms.values()}, _short)
    results["contamination"] = {"arms": con["arms"], "sources": {
        n: {k: ({t: len(v) for t, v in x.items()} if k == "matched" else x) for k, x in s.items()}
        for n, s in con["sources"].items()}}
    con_md = contamination.table(con, tasks, _short, (recipe.get("decontamination") or {}).get("ngram", 13))
    (out / "contamination.md").write_text(con_md)
    with open(out / "comparisons.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows_csv[0]) if rows_csv else ["metric"])
        w.writeheader()
        w.writerows(rows_csv)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    from harness.report import plots

    plots.write_all(plan, recipe, arms, results, out, groups)
    report_md = (f"# {plan.experiment}\n\n{len(recipe['seeds'])} training seed(s) per arm; 95% intervals from a paired "
                 f"bootstrap over items and seeds ({n_boot} replicates); bold: significantly better, italic: "
                 f"significantly worse than the reference.\n\n" + "\n\n".join(tables_md) + "\n\n" + tokens_md +
                 "\n" + con_md)
    (out / "report.md").write_text(report_md)
    if (recipe.get("wandb") or {}).get("mode", "disabled") != "disabled":
        _log_wandb(recipe, plan.experiment, arms, rows_csv, out)
    return results


def _log_wandb(recipe: dict, experiment: str, arms: dict[str, ArmData], rows: list[dict], out: Path) -> None:
    """One W&B run for the report, in the experiment's group: per arm/seed/task scores, the comparison table, and
    the report's files as an artifact."""
    import wandb

    from harness import tracking

    run = tracking.init_run(recipe["wandb"], out, group=experiment, name=f"{experiment}-report", job_type="report")
    scores = wandb.Table(columns=["arm", "seed", "task", "metric", "value"])
    for a in arms.values():
        for metric, per_task in a.scores.items():
            for task, x in per_task.items():
                for k, seed in enumerate(a.seeds):
                    scores.add_data(a.name, seed, _short(task), metric, float(x[k].mean()))
    comparisons = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows]) if rows else None
    run.log({"scores": scores, **({"comparisons": comparisons} if comparisons is not None else {})})
    art = wandb.Artifact(f"{experiment}-report", type="report")
    for f in sorted(out.glob("*")):
        if f.is_file():
            art.add_file(str(f))
    run.log_artifact(art)
    run.finish()


def _tables(metric, label, higher, scale, ref, arms, columns, values, deltas, n_seeds) -> tuple[str, str]:
    head = [_short(c) for c in columns]
    arrow = "higher is better" if higher else "lower is better"
    md = [f"### {label} ({arrow}), against `{ref}`", "", "| arm | " + " | ".join(head) + " |",
          "|---|" + "---|" * len(head)]
    tex = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\begin{tabular}{l" + "r" * len(head) + "}", r"\toprule",
           "Arm & " + " & ".join(h.replace("_", r"\_") for h in head) + r" \\", r"\midrule"]
    for name in [ref] + [a for a in arms if a != ref]:
        cells = [_cell(values[name][c], None if name == ref else deltas[name][c], scale, higher) for c in columns]
        md.append(f"| {name}{' (reference)' if name == ref else ''} | " + " | ".join(c[0] for c in cells) + " |")
        tex.append(name.replace("_", r"\_") + " & " + " & ".join(c[1] for c in cells) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}",
            f"\\caption{{{label.capitalize()} ({arrow}) against {ref.replace('_', chr(92) + '_')}: value, delta "
            f"and 95\\% interval (paired bootstrap over items and {n_seeds} seeds); $^\\dagger$: significant.}}",
            r"\end{table}"]
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


def _tokens_table(arms: dict[str, ArmData]) -> str:
    sources = sorted({s for a in arms.values() for s in a.tokens_by_source})
    lines = ["### tokens seen in training (mean over seeds)", "", "| arm | " + " | ".join(sources) + " | total |",
             "|---|" + "---|" * (len(sources) + 1)]
    for a in arms.values():
        total = sum(a.tokens_by_source.values()) or 1.0
        cells = [f"{a.tokens_by_source.get(s, 0):,.0f} ({a.tokens_by_source.get(s, 0) / total:.1%})" for s in sources]
        lines.append(f"| {a.name} | " + " | ".join(cells) + f" | {total:,.0f} |")
    return "\n".join(lines) + "\n"
