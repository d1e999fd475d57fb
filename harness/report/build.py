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
from harness.report import contamination, costs, decisions, scales, stats, synthetic
from harness.report import sweep as sweeps

# metric -> (label, higher is better, scale for display); `score` is each task's own metric (accuracy for multiple
# choice, the first of a generative task's lm-eval metrics), shown when the tasks' metrics differ
METRICS = {"score": ("score (each task's own metric)", True, 100.0), "acc": ("accuracy", True, 100.0),
           "acc_norm": ("length-normalised accuracy", True, 100.0), "exact_match": ("exact match", True, 100.0),
           "gold_bpb": ("bits per byte of the correct or reference answer", False, 1.0)}
NOT_SCORES = {"doc_id", "id", "gold", "loglik", "bytes", "gold_prob", "response", "raw_response", "reference",
              "subtask", "leaf_doc_id"}


def metric_info(metric: str) -> tuple[str, bool, float]:
    """(label, higher is better, display scale) of a metric; one lm-eval defines and we do not name (f1, pass@1)
    reads as a fraction, higher is better."""
    return METRICS.get(metric, (metric, True, 100.0))


def record_metrics(rec: dict) -> list[str]:
    """The per-item metrics in an evaluation record, `score` first (records made before it existed: accuracy)."""
    return ["score"] + [k for k, v in rec.items() if k not in NOT_SCORES and k != "score"
                        and isinstance(v, (int, float)) and not isinstance(v, bool)]


def _score(rec: dict, metric: str) -> float:
    return float(rec["acc"] if metric == "score" and "score" not in rec else rec[metric])


SUITES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "evals").glob("*.yaml"))


class ReportError(ValueError):
    pass


@dataclass
class ArmData:
    name: str
    seeds: list[int]
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # metric -> task -> [seeds, items]
    primary: dict[str, str] = field(default_factory=dict)  # task -> the metric its `score` is
    tokens_by_source: dict[str, float] = field(default_factory=dict)  # mean over seeds
    unique_by_source: dict[str, dict] = field(default_factory=dict)  # {unique: tokens, epochs}, from the blend
    evaluated: dict[str, set] = field(default_factory=dict)  # task -> ids of the evaluated items
    mix: dict[str, float] = field(default_factory=dict)
    item_ids: dict[str, list] = field(default_factory=dict)  # task -> the evaluated items' doc_ids, in order
    item_keys: dict[str, list] = field(default_factory=dict)  # task -> the items' ids in the eval index, in order


def _short(task: str) -> str:
    """offline_arc_easy -> arc_easy: a suite's tasks are named <suite>_<task>."""
    for suite in SUITES:
        if task.startswith(suite + "_"):
            return task[len(suite) + 1:]
    return task


BASE = "base"  # the report's row for a continuation's base model (an arm may not take the name)


def _samples(plan: Plan, sid: str) -> dict[str, list[dict]]:
    folder = plan.dir(plan.by_id(sid)) / "samples"
    return {f.stem: [json.loads(l) for l in f.read_text().splitlines()] for f in sorted(folder.glob("*.jsonl"))}


def _primary(plan: Plan, sid: str) -> dict[str, str]:
    spec = plan.by_id(sid)
    tasks = plan.store.manifest(spec.kind, spec.digest)["result"]["tasks"]
    return {t: m.get("primary", "acc") for t, m in tasks.items()}


def _arrays(per_seed: list[dict[str, list[dict]]], task: str) -> dict[str, np.ndarray]:
    """{metric: [seeds, items]} of one task."""
    return {m: np.array([[_score(r, m) for r in s[task]] for s in per_seed], dtype=np.float64)
            for m in record_metrics(per_seed[0][task][0])}


def collect_base(plan: Plan, arms: dict[str, ArmData]) -> ArmData | None:
    """A continuation's base model, evaluated once (stage eval/base), as a one-"seed" row on the same items as the
    arms; None for from-scratch recipes."""
    if not any(s.id == "eval/base" for s in plan.stages):
        return None
    if not plan.is_cached(plan.by_id("eval/base")):
        raise ReportError("cannot build the report:\n  the base model: no evaluation yet (stage eval/base has not "
                          "run)")
    per_task = _samples(plan, "eval/base")
    ref = next(iter(arms.values()))
    if set(per_task) != set(ref.scores["score"]):
        raise ReportError(f"the base model and arm '{ref.name}' were evaluated on different tasks: "
                          f"{sorted(set(per_task) ^ set(ref.scores['score']))}")
    for t, recs in sorted(per_task.items()):
        if [r["doc_id"] for r in recs] != ref.item_ids[t]:
            raise ReportError(f"task {t}: the base model was evaluated on other items than arm '{ref.name}'")
    data = ArmData(BASE, [0], primary=_primary(plan, "eval/base"))
    for t in sorted(per_task):
        for metric, x in _arrays([per_task], t).items():
            data.scores.setdefault(metric, {})[t] = x
    return data


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
            per_seed.append(_samples(plan, sid))
            data.primary = _primary(plan, sid)
            tr = plan.by_id(f"train/{arm['name']}/seed{seed}")
            for src, n in plan.store.manifest(tr.kind, tr.digest)["result"]["tokens_by_source"].items():
                data.tokens_by_source[src] = data.tokens_by_source.get(src, 0.0) + n / len(recipe["seeds"])
            bl = plan.by_id(tr.deps["blend"]) if "blend" in tr.deps else None
            if bl is not None and plan.is_cached(bl) and not data.unique_by_source:  # every seed has the same data
                for s in plan.store.manifest(bl.kind, bl.digest)["result"]["sources"]:
                    data.unique_by_source[s["name"]] = {"unique": s["available_tokens"], "epochs": s["epochs"]}
        if len(per_seed) != len(recipe["seeds"]):
            continue
        tasks = set(per_seed[0])
        for k, s in enumerate(per_seed[1:], 1):
            if set(s) != tasks:
                problems.append(f"arm '{arm['name']}': seed {recipe['seeds'][k]} was evaluated on other tasks "
                                f"({sorted(set(s) ^ tasks)})")
        data.scores["score"] = {}
        for t in sorted(tasks):
            if any(t not in s for s in per_seed):
                continue  # a seed without the task: refused above
            ids = [r["doc_id"] for r in per_seed[0][t]]
            if any([r["doc_id"] for r in s[t]] != ids for s in per_seed):
                problems.append(f"arm '{arm['name']}' task {t}: seeds were evaluated on different items")
                continue
            for metric, x in _arrays(per_seed, t).items():
                data.scores.setdefault(metric, {})[t] = x
            data.evaluated[t] = {r["id"] for r in per_seed[0][t] if r.get("id")}
            data.item_ids[t] = ids
            data.item_keys[t] = [r.get("id") for r in per_seed[0][t]]
        arms[arm["name"]] = data
    if problems:
        raise ReportError("cannot build the report:\n  " + "\n  ".join(problems))
    ref = None
    for a in arms.values():
        tasks = set(a.scores["score"])
        if ref is None:
            ref = a
        elif tasks != set(ref.scores["score"]):
            raise ReportError(f"arm '{a.name}' and arm '{ref.name}' were evaluated on different tasks: "
                              f"{sorted(tasks ^ set(ref.scores['score']))}")
        else:  # comparisons pair items by position: the same items, in the same order, in every arm
            for t in sorted(tasks):
                if a.item_ids[t] != ref.item_ids[t]:
                    problems.append(f"arm '{a.name}' and arm '{ref.name}' were evaluated on different items of "
                                    f"task {t}")
    if problems:
        raise ReportError("cannot build the report:\n  " + "\n  ".join(problems))
    return arms


def _value(x: float, scale: float, sign: str = "") -> str:
    """A metric's value (sign "+": a delta) as the tables print it: percentages with 2 decimals, bpb with 4."""
    text = f"{x * scale:{sign}.2f}" if scale != 1 else f"{x:{sign}.4f}"
    return text.replace("-", "+" if sign else "") if float(text) == 0 else text  # no "-0.00"


def _cell(value: float, delta: stats.Delta | None, scale: float, higher: bool) -> tuple[str, str]:
    """(markdown, latex) text of one cell: the arm's value, and for a compared arm its delta and interval."""
    v = _value(value, scale)
    if delta is None:
        return v, v
    fmt = lambda x: _value(x, scale, "+")  # noqa: E731
    better = (delta.estimate > 0) == higher
    mark = ("**" if better else "_") if delta.significant else ""
    md = f"{v} ({mark}{fmt(delta.estimate)}{mark} [{fmt(delta.low)}, {fmt(delta.high)}])"
    tex_delta = f"{fmt(delta.estimate)}" + (r"$^\dagger$" if delta.significant else "")
    tex = f"{v} \\scriptsize({tex_delta} [{fmt(delta.low)}, {fmt(delta.high)}])"
    return md, tex


def build(plan: Plan, recipe: dict, out: Path, n_boot: int = 2000) -> dict:
    """The report in `out`; with scales, a full report per scale (out/scale-<name>/) and on top the rankings and
    their agreement across scales (scales.md) beside the largest scale's report."""
    if not recipe.get("scales"):
        return _build_one(plan, recipe, out, n_boot)[0]
    per, data = {}, {}
    for sc in recipe["scales"]:
        per[sc["name"]], data[sc["name"]] = _build_one(plan, scales.scaled_dict(recipe, sc),
                                                       out / f"scale-{sc['name']}", n_boot, tag=f"-{sc['name']}")
    names = list(per)
    largest = per[names[-1]]
    arms = [a["name"] for a in recipe["arms"]]
    agree, md = {}, []
    for metric in _decision_metrics(largest["metrics"]):
        label, higher, scale = metric_info(metric)
        agree[metric] = scales.agreement({sc: {a: data[sc][scales.arm_at(a, sc)].scores[metric] for a in arms}
                                          for sc in names}, arms, higher, n_boot)
        md.append(scales.table(agree[metric], label, lambda x, s=scale: _value(x, s)))
    results = {**largest, "scales": {"names": names, "largest": names[-1], "agreement": agree}}
    out.mkdir(parents=True, exist_ok=True)
    scales_md = "\n".join(md)
    (out / "scales.md").write_text(scales_md)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(
        f"# {plan.experiment}: {len(names)} scales ({', '.join(names)})\n\nEvery scale's full report: "
        f"{', '.join(f'scale-{n}/report.md' for n in names)}. Below: the agreement across scales, then the report of "
        f"the largest scale.\n\n{scales_md}\n" + (out / f"scale-{names[-1]}" / "report.md").read_text())
    return results


def _build_one(plan: Plan, recipe: dict, out: Path, n_boot: int = 2000,
               tag: str = "") -> tuple[dict, dict[str, ArmData]]:
    rep = recipe.get("report") or {}
    baseline = rep.get("baseline", "baseline")
    controls = [c for c in rep.get("controls", []) if c != baseline]
    names = [a["name"] for a in recipe["arms"]]
    for who in [baseline, *controls]:
        if who not in names:
            raise ReportError(f"report: no arm named '{who}' (arms: {', '.join(names)})")
    arms = collect(plan, recipe)
    base = collect_base(plan, arms)
    refs = [baseline, *controls] + ([BASE] if base else [])
    rows_of = {**arms, **({BASE: base} if base else {})}
    suite = yaml.safe_load((Path(__file__).resolve().parents[2] / "evals" / f"{recipe['eval']['suite']}.yaml")
                           .read_text())
    prefix = recipe["eval"]["suite"] + "_"
    groups = {g: [prefix + t for t in ts] for g, ts in suite.get("groups", {}).items()}
    tasks = sorted(arms[baseline].scores["score"])
    primary = arms[baseline].primary
    columns = tasks + [g for g in groups if any(t in tasks for t in groups[g])] + ["average"]
    out.mkdir(parents=True, exist_ok=True)
    shown = table_metrics(arms[baseline])
    results: dict = {"experiment": plan.experiment, "seeds": recipe["seeds"], "baseline": baseline,
                     "controls": controls, "columns": columns, "metrics": shown,
                     "primary": {t: primary.get(t, "acc") for t in tasks}, "comparisons": {}, "values": {},
                     "tokens": {}}
    tables_md, rows_csv = [], []
    for metric in shown:
        label, higher, scale = metric_info(metric)
        m_tasks = sorted(arms[baseline].scores[metric])
        m_columns = m_tasks + [g for g in groups if any(t in m_tasks for t in groups[g])] + ["average"]
        values = {}
        for a in rows_of.values():
            per_task = {t: float(a.scores[metric][t].mean()) for t in m_tasks}
            for g, members in groups.items():
                ms = [per_task[t] for t in members if t in per_task]
                if ms:
                    per_task[g] = float(np.mean(ms))
            per_task["average"] = float(np.mean([per_task[t] for t in m_tasks]))
            values[a.name] = per_task
        results["values"][metric] = values
        for ref in refs:
            deltas = {}
            for a in arms.values():
                if a.name == ref:
                    continue
                ds = stats.compare(a.scores[metric], rows_of[ref].scores[metric], n_boot=n_boot, groups=groups)
                deltas[a.name] = {d.task: d for d in ds}
                for d in ds:
                    rows_csv.append({"metric": metric, "arm": a.name, "reference": ref, "task": _short(d.task),
                                     "value": values[a.name][d.task], "reference_value": values[ref][d.task],
                                     "delta": d.estimate, "ci_low": d.low, "ci_high": d.high,
                                     "significant": d.significant})
            results["comparisons"][f"{metric}_vs_{ref}"] = {
                arm: {t: {"delta": d.estimate, "low": d.low, "high": d.high, "significant": d.significant}
                      for t, d in ds_.items()} for arm, ds_ in deltas.items()}
            md, tex = _tables(metric, label, higher, scale, ref, arms, m_columns, values, deltas,
                              len(recipe["seeds"]), with_base=base is not None,
                              averaged=_averaged(metric, m_tasks, primary))
            stem = f"{metric}_vs_{ref}"
            (out / f"{stem}.md").write_text(md)
            (out / f"{stem}.tex").write_text(tex)
            tables_md.append(md)
    for a in arms.values():
        total = sum(a.tokens_by_source.values()) or 1.0
        results["tokens"][a.name] = {s: {"tokens": n, "share": n / total, **a.unique_by_source.get(s, {})}
                                     for s, n in a.tokens_by_source.items()}
    tokens_md = _tokens_table(arms)
    (out / "tokens.md").write_text(tokens_md)
    results["synthetic"] = synthetic.collect(plan, recipe)
    synthetic_md = synthetic.table(results["synthetic"])
    (out / "synthetic.md").write_text(synthetic_md)
    con = contamination.collect(plan, recipe, {a.name: a.evaluated for a in arms.values()}, _short)
    results["contamination"] = {"arms": con["arms"], "sources": {
        n: {k: ({t: len(v) for t, v in x.items()} if k == "matched" else x) for k, x in s.items()}
        for n, s in con["sources"].items()}}
    con_md = contamination.table(con, tasks, _short, (recipe.get("decontamination") or {}).get("ngram", 13))
    (out / "contamination.md").write_text(con_md)
    decide_md = _decide(recipe, arms, rows_of, refs, groups, shown, con, results, n_boot, out)
    (out / "decisions.md").write_text(decide_md)
    sweep_md = _sweeps(recipe, arms, shown, results, n_boot)
    (out / "sweep.md").write_text(sweep_md)
    results["costs"] = costs.collect(plan, recipe, {a.name: a.tokens_by_source for a in arms.values()})
    lead_label, _, lead_scale = metric_info(shown[0])
    costs_md = costs.table(results["costs"], {n: d["average"]["delta"] for n, d in
                                              results["comparisons"][f"{shown[0]}_vs_{baseline}"].items()},
                           baseline, lead_label, lead_scale)
    (out / "costs.md").write_text(costs_md)
    with open(out / "comparisons.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows_csv[0]) if rows_csv else ["metric"])
        w.writeheader()
        w.writerows(rows_csv)
    results["base"] = None if base is None else {"evaluated": "once", "values": {m: results["values"][m][BASE]
                                                                                 for m in shown}}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    from harness.report import plots

    plots.write_all(plan, recipe, arms, results, out)
    report_md = (f"# {plan.experiment}\n\n{len(recipe['seeds'])} training seed(s) per arm; 95% intervals from a paired "
                 f"bootstrap over items and seeds ({n_boot} replicates); bold: significantly better, italic: "
                 f"significantly worse than the reference.{BASE_NOTE if base else ''}\n\n" +
                 "\n\n".join(tables_md) + "\n\n" + decide_md + "\n" + sweep_md + "\n" + tokens_md + "\n" +
                 costs_md + "\n" + synthetic_md + "\n" + con_md)
    (out / "report.md").write_text(report_md)
    if (recipe.get("wandb") or {}).get("mode", "disabled") != "disabled":
        _log_wandb(recipe, plan, rows_of, rows_csv, out, tag)
    return results, arms


def _decision_metrics(shown: list[str]) -> list[str]:
    """The metrics the decision statistics and the sweep fits cover: the report's lead metric and, where every task
    has it, the continuous one (bits per byte)."""
    return list(dict.fromkeys([shown[0]] + (["gold_bpb"] if "gold_bpb" in shown else [])))


def _decide(recipe: dict, arms: dict[str, ArmData], rows_of: dict[str, ArmData], refs: list[str],
            groups: dict[str, list[str]], shown: list[str], con: dict, results: dict, n_boot: int,
            out_dir: Path) -> str:
    """How sure each comparison is (report/decisions.py) and the deltas on the clean items: the items that no
    source any arm trains on matched (sources that were not checked are named)."""
    matched: dict[str, set] = {}
    for src in con["sources"].values():
        for t, ids in src.get("matched", {}).items():
            matched.setdefault(t, set()).update(ids)
    keys = next(iter(arms.values())).item_keys
    clean = decisions.clean_columns(keys, {t: matched.get(_short(t), set()) for t in keys})
    n_all, n_clean = sum(len(m) for m in clean.values()), sum(int(m.sum()) for m in clean.values())
    unchecked = sorted(n for n, s in con["sources"].items() if not s["checked"] and s["kind"] != "seed_render")
    md = ["## Decision statistics", "",
          f"Estimators: README, \"Reading the decision statistics\". Clean items: the {n_clean} of {n_all} evaluated "
          "items that no arm's training data matched" + (f" (not checked: {', '.join(unchecked)})" if unchecked else
                                                         "") + ".", ""]
    out: dict = {"clean_items": n_clean, "items": n_all, "unchecked": unchecked}
    for metric in _decision_metrics(shown):
        label, higher, scale = metric_info(metric)
        per = out[metric] = {"snr": decisions.signal_to_noise({n: a.scores[metric] for n, a in arms.items()}),
                             "vs": {}}
        for ref in refs:
            rows, clean_rows = {}, {}
            for a in arms.values():
                if a.name == ref:
                    continue
                b = rows_of[ref].scores[metric]
                sure = decisions.compare(a.scores[metric], b, groups, b_fixed=rows_of[ref] is not arms.get(ref))
                delta = results["comparisons"][f"{metric}_vs_{ref}"][a.name]
                rows[a.name] = {"sureness": {t: s.to_dict() for t, s in sure.items()}, "delta": delta}
                if n_clean == n_all:  # nothing matched: the clean subset is every item
                    d = delta["average"]
                else:
                    kept = [t for t in sorted(a.scores[metric]) if clean[t].any()]
                    d = vars(stats.compare({t: a.scores[metric][t][:, clean[t]] for t in kept},
                                           {t: b[t][:, clean[t]] for t in kept}, n_boot=n_boot)[-1])
                    d["delta"] = d.pop("estimate")
                cols = list(a.scores[metric])
                clean_rows[a.name] = {"delta": d["delta"], "low": d["low"], "high": d["high"],
                                      "items": sum(int(clean[t].sum()) for t in cols),
                                      "all_items": sum(len(clean[t]) for t in cols)}
            per["vs"][ref] = {"arms": rows, "clean": clean_rows}
            md.append(decisions.table(label, scale, ref, rows, clean_rows))
        md.append(decisions.snr_table(label, scale, per["snr"], _short))
    results["decisions"] = out
    _decisions_csv(out, out_dir)
    return "\n".join(md)


def _decisions_csv(out: dict, folder: Path) -> None:
    """Every comparison's statistics per task, group and the average (decisions.md shows the average)."""
    cols = ["metric", "arm", "reference", "task", "delta", "se", "smallest_detectable", "seed_sd_arm", "seed_sd_ref",
            "seeds_arm", "seeds_ref", "seeds_for_significance", "significant_now", "estimable"]
    with open(folder / "decisions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for metric, per in out.items():
            if not isinstance(per, dict) or "vs" not in per:
                continue
            for ref, v in per["vs"].items():
                for arm, r in v["arms"].items():
                    for t, x in r["sureness"].items():
                        w.writerow([metric, arm, ref, _short(t), x["delta"], x["se"], x["mde"], *x["seed_sd"],
                                    *x["seeds"], x["seeds_for_significance"], x["enough_now"], x["estimable"]])


def _sweeps(recipe: dict, arms: dict[str, ArmData], shown: list[str], results: dict, n_boot: int) -> str:
    """Each curve (report/sweep.py) - a source's share, or a knob of a synthetic set at one share: the fit, the
    best share or value with its interval or why none is named, and the repetition each point implies."""
    knobbed = {k: c for k, c in sweeps.knob_curves(recipe).items() if all(n in arms for n, _ in c["points"])}
    in_knobs = {n for c in knobbed.values() for n, _ in c["points"]}
    cur = {s: {"source": s, "points": pts, "knob": None}
           for s, pts in sweeps.curves(recipe["arms"], results["baseline"], in_knobs).items()
           if all(n in arms for n, _ in pts)}
    cur.update(knobbed)
    results["sweeps"] = {}
    md = ["## At which share", ""]
    if not cur:
        return "\n".join(md + ["No arm raises one source's share over the baseline's: no curve to fit.", ""])
    md += ["Model: each arm's average over the tasks is a quadratic in the share (least squares over the arms' "
           "means, the baseline at share 0; a line with two shares) - or, for a knob swept at one share, in the "
           "knob's value; 95% intervals from the paired bootstrap, the curve refitted on every replicate. README: "
           "\"Share sweeps\".", ""]
    tokens, max_epochs = float(recipe["data"]["tokens"]), float(recipe["data"]["max_epochs"])
    metrics = _decision_metrics(shown)
    for key, c in cur.items():
        names, xs = [n for n, _ in c["points"]], np.array([x for _, x in c["points"]])
        knob = c["knob"]
        what = knob or "share"
        # each point's set and the tokens of it the arm trains on: the source itself, or the knob's copy of it
        sets = c["sets"] if knob else [c["source"]] * len(names)
        share = [c["share"]] * len(names) if knob else list(xs)
        unique = [arms[n].unique_by_source.get(st, {}).get("unique") for n, st in zip(names, sets)]
        # the largest share the set allows within data.max_epochs (a knob's next values: unknown sizes, no bound)
        allowed = None if knob else \
            min(1.0, max_epochs * max(u or 0 for u in unique) / tokens) if any(unique) else 1.0
        points = [{"arm": n, "x": float(x), **({"value": float(x)} if knob else {"share": float(x)}),
                   "epochs": (sh * tokens / u) if u and sh else 0.0}
                  for n, x, sh, u in zip(names, xs, share, unique)]
        entry = results["sweeps"][key] = {"source": c["source"], "knob": knob, "share": c.get("share"),
                                          "points": points, "unique": unique[-1], "allowed": allowed, "fits": {}}
        head = " | ".join(metric_info(m)[0] for m in metrics)
        title = f"{c['source']}: {knob} at a share of {c['share']:.1%}" if knob else c["source"]
        md += [f"### {title}", "", f"| {what} | arm | epochs | {head} |", "|---|---|---|" + "---|" * len(metrics)]
        for metric in metrics:
            label, higher, scale = metric_info(metric)
            point, reps = sweeps.replicates({n: arms[n].scores[metric] for n in names}, names, n_boot)
            f = sweeps.fit(xs, point, reps, higher, upto=min(allowed or np.inf, 2 * float(xs.max())), what=what)
            f["values"] = point.tolist()
            if f["best"] is not None and not knob and unique[-1]:
                f["best_epochs"] = f["best"] * tokens / unique[-1]
                f["repetition_warning"] = f["best_epochs"] > max_epochs
            entry["fits"][metric] = f
        for k, p in enumerate(points):
            vals = " | ".join(_value(entry["fits"][m]["values"][k], metric_info(m)[2]) for m in metrics)
            md.append(f"| {p['x']:g} | {p['arm']} | {p['epochs']:.2f} | {vals} |" if knob else
                      f"| {p['x']:.1%} | {p['arm']} | {p['epochs']:.2f} | {vals} |")
        md.append("")
        fmt = (lambda x: f"{x:.3g}") if knob else (lambda x: f"{x:.1%}")
        for metric in metrics:
            f, (label, _, _) = entry["fits"][metric], metric_info(metric)
            if f["best"] is None:
                md.append(f"- best {what} by {label}: not identified ({f['not_identified']}).")
                continue
            seen = "" if "best_epochs" not in f else f"; {c['source']} seen {f['best_epochs']:.2f} times there" + (
                f" - WARNING: more than data.max_epochs ({max_epochs:g}); the set would have to grow"
                if f["repetition_warning"] else "")
            md.append(f"- best {what} by {label}: {fmt(f['best'])} [{fmt(f['best_low'])}, {fmt(f['best_high'])}] "
                      f"(inside the tested range in {f['interior_share']:.0%} of replicates){seen}.")
        md.append("")
    return "\n".join(md)


def table_metrics(arm: ArmData) -> list[str]:
    """The metrics the report tabulates, in order. When the tasks' own metrics differ (multiple choice beside
    generative tasks), a `score` table holds each task's own metric first, and a metric that is every one of its
    tasks' own is not tabulated again; otherwise accuracy leads. Bits per byte (every task has it) comes last."""
    mixed = len(set(arm.primary.get(t, "acc") for t in arm.scores["score"])) > 1
    named = [m for m in METRICS if m not in ("score", "gold_bpb")]
    others = sorted(m for m in arm.scores if m not in METRICS)
    out = ["score"] if mixed else []
    for m in named + others:
        if m not in arm.scores:
            continue
        own_everywhere = all(arm.primary.get(t, "acc") == m for t in arm.scores[m])
        if mixed and own_everywhere:
            continue
        out.append(m)
    return out + (["gold_bpb"] if "gold_bpb" in arm.scores else [])


def _averaged(metric: str, tasks: list[str], primary: dict[str, str]) -> str:
    """What a table's group and average columns average, in words."""
    if metric != "score":
        return f"groups and the average: unweighted means over the {len(tasks)} tasks with this metric"
    by: dict[str, list[str]] = {}
    for t in tasks:
        by.setdefault(primary.get(t, "acc"), []).append(_short(t))
    return ("each task's own metric - " + "; ".join(f"{m}: {', '.join(ts)}" for m, ts in sorted(by.items())) +
            f"; groups and the average: unweighted means of these {len(tasks)} scores")


def run_links(plan: Plan) -> dict:
    """The W&B runs behind the report: per arm and seed, the training run and where its scores went (the training
    run itself online, an eval run offline), by id and folder."""
    links: dict = {}
    for spec in plan.stages:
        if spec.kind not in ("train", "eval") or not plan.is_cached(spec):
            continue
        run = plan.store.manifest(spec.kind, spec.digest)["result"].get("wandb")
        if run:
            arm, seed = spec.id.split("/")[1:3] if spec.id.count("/") == 2 else (spec.id.split("/")[1], "once")
            links.setdefault(arm, {}).setdefault(seed, {})[spec.kind] = {
                "id": run["id"], "offline": run["offline"], "dir": str(plan.dir(spec) / run["dir"])}
    return links


def _log_wandb(recipe: dict, plan: Plan, arms: dict[str, ArmData], rows: list[dict], out: Path,
               tag: str = "") -> None:
    """One W&B run for the report, in the experiment's group: per arm/seed/task scores, the comparison table, the
    report's files as an artifact, and the runs it was made from (config `runs.<arm>.<seed>.train|eval.id`)."""
    import wandb

    from harness import tracking

    experiment = plan.experiment + tag  # tag: the scale of a per-scale report
    links = {a: r for a, r in run_links(plan).items() if a in arms}
    run = tracking.init_run(recipe["wandb"], out, group=plan.experiment, name=f"{experiment}-report",
                            job_type="report",
                            config={"experiment": experiment, "baseline": recipe["report"]["baseline"],
                                    "seeds": ",".join(map(str, recipe["seeds"])), "runs": links})
    if run is None:
        return
    runs = wandb.Table(columns=["arm", "seed", "train_run", "scores_run", "scores_on_training_run"])
    for arm, seeds in links.items():
        for seed, r in seeds.items():
            ev = r.get("eval", {})
            runs.add_data(arm, seed, r.get("train", {}).get("id", ""), ev.get("id", ""),
                          ev.get("id") == r.get("train", {}).get("id"))
    scores = wandb.Table(columns=["arm", "seed", "task", "metric", "value"])
    for a in arms.values():
        for metric, per_task in a.scores.items():
            for task, x in per_task.items():
                for k, seed in enumerate(a.seeds):
                    scores.add_data(a.name, seed, _short(task), metric, float(x[k].mean()))
    comparisons = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows]) if rows else None
    run.log({"scores": scores, "runs": runs, **({"comparisons": comparisons} if comparisons is not None else {})})
    art = wandb.Artifact(f"{experiment}-report", type="report")
    for f in sorted(out.glob("*")):
        if f.is_file():
            art.add_file(str(f))
    run.log_artifact(art)
    run.finish()


# how the base's single evaluation enters the comparisons (README: "Continuation arms")
BASE_NOTE = (" Every arm continues the same base model, shown in each table as `base` (evaluated once, before "
             "any continuation). It has no training seeds: it is one fixed model, not a draw of a training run, so "
             "against it (the `vs base` tables: what continuation added) a replicate resamples the items, paired, "
             "and the arm's seeds only; the interval holds the item noise and the arm's seed noise.")


def _tables(metric, label, higher, scale, ref, arms, columns, values, deltas, n_seeds,
            with_base: bool = False, averaged: str = "") -> tuple[str, str]:
    head = [_short(c) for c in columns]
    arrow = "higher is better" if higher else "lower is better"
    md = [f"### {label} ({arrow}), against `{ref}`", "", *([averaged, ""] if averaged else []),
          "| arm | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    tex = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\begin{tabular}{l" + "r" * len(head) + "}", r"\toprule",
           "Arm & " + " & ".join(h.replace("_", r"\_") for h in head) + r" \\", r"\midrule"]
    # the base's row leads every table of a continuation: value only, unless it is the reference
    order = ([BASE] if with_base and ref != BASE else []) + [ref] + [a for a in arms if a != ref]
    for name in order:
        cells = [_cell(values[name][c], deltas[name][c] if name in deltas else None, scale, higher)
                 for c in columns]
        tag = " (reference)" if name == ref else " (before continuation)" if with_base and name == BASE else ""
        md.append(f"| {name}{tag} | " + " | ".join(c[0] for c in cells) + " |")
        tex.append(name.replace("_", r"\_") + " & " + " & ".join(c[1] for c in cells) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}",
            f"\\caption{{{label.capitalize()} ({arrow}) against {ref.replace('_', chr(92) + '_')}: value, delta "
            f"and 95\\% interval (paired bootstrap over items and {n_seeds} seeds); $^\\dagger$: significant.}}",
            r"\end{table}"]
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


def _tokens_table(arms: dict[str, ArmData]) -> str:
    """Tokens seen per arm and source, and beside them the source's unique tokens and the epochs that implies (a
    small synthetic set seen many times is not the same data as a large one seen once)."""
    sources = sorted({s for a in arms.values() for s in a.tokens_by_source})
    lines = ["### tokens seen in training (mean over seeds), unique tokens and epochs per source", "",
             "| arm | " + " | ".join(sources) + " | total |", "|---|" + "---|" * (len(sources) + 1)]
    for a in arms.values():
        total = sum(a.tokens_by_source.values()) or 1.0
        cells = []
        for s in sources:
            n = a.tokens_by_source.get(s, 0)
            u = a.unique_by_source.get(s)
            cells.append(f"{n:,.0f} ({n / total:.1%})" + (f"; {u['unique']:,} unique, {u['epochs']:.2f} epochs"
                                                          if u and n else ""))
        lines.append(f"| {a.name} | " + " | ".join(cells) + f" | {total:,.0f} |")
    return "\n".join(lines) + "\n"


def headline(results: dict):
    """The comparison a run ends on (a rich Table): each arm's average accuracy and bits per byte of the answers,
    and their change against the baseline with the 95% interval; significant changes marked."""
    from rich.table import Table

    base = results["baseline"]
    t = Table(title=f"{results['experiment']}: average over the tasks, vs {base} "
                    f"({len(results['seeds'])} seed(s), 95% paired-bootstrap intervals)", title_justify="left")
    t.add_column("arm")
    lead = (results.get("metrics") or ["acc"])[0]
    for metric in (lead, "gold_bpb"):
        label, higher, scale = metric_info(metric)
        t.add_column(label, justify="right")
        t.add_column(f"vs {base}", justify="right")
    for arm in results["values"][lead]:
        cells = [arm]
        for metric in (lead, "gold_bpb"):
            label, higher, scale = metric_info(metric)
            value = results["values"][metric][arm]["average"]
            d = results["comparisons"][f"{metric}_vs_{base}"].get(arm, {}).get("average")
            fmt = lambda x: _value(x, scale, "+")  # noqa: E731
            cells.append(_value(value, scale))
            if d is None:
                cells.append("(reference)" if arm == base else "")
            else:
                better = (d["delta"] > 0) == higher
                style = ("green" if better else "red") if d["significant"] else ""
                text = f"{fmt(d['delta'])} [{fmt(d['low'])}, {fmt(d['high'])}]"
                cells.append(f"[{style}]{text}[/]" if style else text)
        t.add_row(*cells)
    return t
