"""What was tried: across every experiment of a run store, the arms (their mixtures), scales and seeds, and what
each report decided - the delta of the lead metric's average against the baseline with its interval, set against
the smallest effect the design could detect, and each sweep's best share. Read from the saved recipes and
reports (runs/<experiment>/recipe.yaml and report/results.json); nothing is recomputed.
"""

from __future__ import annotations

import json
import time

import yaml

from harness.store import Store


def _decision(d: dict, sure: dict | None, higher: bool, scale: float) -> str:
    if d["significant"]:
        return "better" if (d["delta"] > 0) == higher else "worse"
    mde = (sure or {}).get("mde")
    shown = f"{mde * scale:.2f}" if scale != 1 else f"{mde:.4f}" if mde is not None else ""
    return "no difference detected" + (f" (smallest detectable: {shown})" if mde is not None else "")


def _scale_results(exp, scale: str) -> dict | None:
    saved = exp / "report" / f"scale-{scale}" / "results.json"
    return json.loads(saved.read_text()) if saved.is_file() else None


def collect(store: Store, source: str | None = None, task: str | None = None) -> list[dict]:
    """One row per arm (and scale) of every experiment, filtered to the arms that train on `source` and, with
    `task`, the deltas on that task (short or full name) instead of the average."""
    from harness.report.build import _short, metric_info

    rows = []
    for name in store.experiments():
        exp = store.experiment_dir(name)
        recipe = yaml.safe_load((exp / "recipe.yaml").read_text()) if (exp / "recipe.yaml").is_file() else None
        if recipe is None:
            continue
        saved = exp / "report" / "results.json"
        results = json.loads(saved.read_text()) if saved.is_file() else None
        scales = [s["name"] for s in recipe.get("scales") or []] or [None]
        baseline = (recipe.get("report") or {}).get("baseline", "baseline")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime((exp / "plan.json").stat().st_mtime))
        for arm in recipe["arms"]:
            if source and arm["mix"].get(source, 0) <= 0:
                continue
            for scale in scales:
                label = arm["name"] if scale is None else f"{arm['name']}.{scale}"
                row = {"experiment": name, "when": when, "arm": arm["name"], "scale": scale,
                       "mix": {s: v for s, v in arm["mix"].items() if v > 0}, "seeds": recipe.get("seeds", [1]),
                       "baseline": arm["name"] == baseline, "metric": None, "column": None, "delta": None,
                       "decision": "no report yet"}
                res = results if scale is None else _scale_results(exp, scale)  # each scale's own report
                if res is not None:
                    metric = res["metrics"][0]
                    _, higher, shown = metric_info(metric)
                    column = "average"
                    if task:
                        column = next((c for c in res["columns"] if c == task or _short(c) == task), None)
                    comp = res["comparisons"].get(f"{metric}_vs_{res['baseline']}", {}).get(label, {})
                    d = comp.get(column) if column else None
                    sure = (((res.get("decisions") or {}).get(metric) or {}).get("vs", {})
                            .get(res["baseline"], {}).get("arms", {}).get(label, {}).get("sureness", {})
                            .get(column or "", None))
                    row.update(metric=metric, column=column, delta=d,
                               decision="reference" if label == res["baseline"] else
                               "task not evaluated" if column is None else _decision(d, sure, higher, shown))
                rows.append(row)
        if results is not None:
            for key, entry in (results.get("sweeps") or {}).items():
                if source and entry["source"] != source:
                    continue
                metric, fit = next(iter(entry["fits"].items()))
                what = entry.get("knob") or "share"
                rows.append({"experiment": name, "when": when, "arm": f"(sweep of {key})", "scale": None,
                             "mix": {f"{entry['source']} {what}": [p["x"] for p in entry["points"]]},
                             "seeds": recipe.get("seeds", [1]), "baseline": False, "metric": metric,
                             "column": "average", "delta": None,
                             "decision": (f"best {what} {fit['best']:.3g} [{fit['best_low']:.3g}, "
                                          f"{fit['best_high']:.3g}]" if fit["best"] is not None else
                                          f"best {what} not identified ({fit['not_identified']})")})
    return rows


def table(rows: list[dict]):
    from rich.table import Table

    from harness.report.build import _short, _value, metric_info

    t = Table(title="what was tried", title_justify="left")
    for col in ("experiment", "arm", "scale", "mixture", "seeds", "delta vs baseline [95% CI]", "decision"):
        t.add_column(col)
    for r in rows:
        mix = ", ".join(f"{s} {v:.0%}" if isinstance(v, float) else f"{s} at {', '.join(f'{x:g}' for x in v)}"
                        for s, v in r["mix"].items())
        if r["delta"] is not None:
            scale = metric_info(r["metric"])[2]
            d = r["delta"]
            delta = (f"{_value(d['delta'], scale, '+')} [{_value(d['low'], scale, '+')}, "
                     f"{_value(d['high'], scale, '+')}] {r['metric']}, {_short(r['column'])}")
        else:
            delta = ""
        t.add_row(r["experiment"], r["arm"], r["scale"] or "", mix, ",".join(map(str, r["seeds"])), delta,
                  r["decision"])
    return t
