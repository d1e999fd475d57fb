"""Contamination beside the scores: for every arm and eval task, how many of the EVALUATED items the arm's
training data matches (n-gram overlap with the eval index), from the stages that checked it - `contamination/<corpus>`
for a base corpus (report only: its matches stay in the data) and `filter/<set>` for a synthetic set (its matches
were dropped, so they are counted as dropped, not as remaining)."""

from __future__ import annotations

import json

from harness.plan import Plan


def _source(plan: Plan, recipe: dict, name: str) -> dict:
    """What the store knows of one source: matched eval item ids per index task, or that it was not checked."""
    if name in recipe.get("corpora", {}):
        sid = f"contamination/{name}"
        if not any(s.id == sid for s in plan.stages) or not plan.is_cached(plan.by_id(sid)):
            return {"kind": "corpus", "checked": False}
        rep = json.loads((plan.dir(plan.by_id(sid)) / "contamination.json").read_text())
        return {"kind": "corpus", "checked": True, "documents": rep["documents"],
                "matched": {t: set(r.get("eval_items", ())) for t, r in rep["per_task"].items()},
                "by_documents": {t: r["documents"] for t, r in rep["per_task"].items()}}
    syn = recipe["synthetic"][name]
    sid = f"filter/{name}"
    if syn["kind"] == "seed_render":  # train-split items: eval contamination only through shared text with evals
        return {"kind": "seed_render", "checked": False}
    spec = plan.by_id(sid)
    if not syn.get("decontaminate", True) or not plan.is_cached(spec):
        return {"kind": "synthetic", "checked": False}
    n_dropped = {t: r["dropped"] for t, r in plan.store.manifest(spec.kind, spec.digest)["result"]
                 ["contamination"].items()}
    return {"kind": "synthetic", "checked": True, "matched": {}, "dropped": n_dropped}


def collect(plan: Plan, recipe: dict, evaluated: dict[str, dict[str, set]], short) -> dict:
    """{"sources": per source, "arms": {arm: {task: {"matched", "evaluated", "unchecked": [sources]}}}};
    `evaluated` gives per arm and eval task the ids of the items evaluated; `short` maps an eval task to the index's
    task name."""
    used = sorted({s for a in recipe["arms"] for s, v in a["mix"].items() if v > 0})
    sources = {s: _source(plan, recipe, s) for s in used}
    arms: dict = {}
    for a in recipe["arms"]:
        mine = [s for s, v in a["mix"].items() if v > 0]
        unchecked = sorted(s for s in mine if not sources[s]["checked"] and sources[s]["kind"] != "seed_render")
        arms[a["name"]] = {}
        for task, ids in evaluated[a["name"]].items():
            hit = set().union(*(sources[s].get("matched", {}).get(short(task), set()) for s in mine))
            arms[a["name"]][task] = {"matched": len(hit & ids), "evaluated": len(ids), "unchecked": unchecked}
    return {"sources": sources, "arms": arms}


def table(con: dict, columns: list[str], short, ngram: int) -> str:
    """Markdown: evaluated items matched per arm and task, then what each checked source matched in all."""
    lines = [f"### contamination: evaluated items that the arm's training data matches ({ngram}-gram overlap)", "",
             "| arm | " + " | ".join(short(c) for c in columns) + " | not checked |",
             "|---|" + "---|" * (len(columns) + 1)]
    for arm, per in con["arms"].items():
        cells = [f"{per[c]['matched']}/{per[c]['evaluated']}" for c in columns]
        unchecked = next(iter(per.values()))["unchecked"] if per else []
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {', '.join(unchecked) or '-'} |")
    notes = []
    for name, s in con["sources"].items():
        if s["kind"] == "corpus" and s["checked"]:
            per = ", ".join(f"{t} {len(ids)} ({s['by_documents'][t]} document{'s' * (s['by_documents'][t] != 1)})"
                            for t, ids in s["matched"].items())
            notes.append(f"- `{name}` (base corpus, {s['documents']:,} documents; matches stay in the data): "
                         f"eval items matched: {per or 'none'}")
        elif s["kind"] == "synthetic" and s["checked"]:
            per = ", ".join(f"{t} {n}" for t, n in s["dropped"].items())
            notes.append(f"- `{name}` (synthetic; matching items were dropped before rendering): items dropped per "
                         f"eval task: {per or 'none'}")
        elif s["kind"] == "seed_render":
            notes.append(f"- `{name}` (train-split items rendered as text: training data the recipe may use)")
        else:
            notes.append(f"- `{name}`: not checked (decontamination.corpus_report or decontaminate is off, or the "
                         f"check has not run)")
    return "\n".join(lines + [""] + notes) + "\n"
