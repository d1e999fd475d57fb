"""What each arm cost: the time of every attempt of every stage behind it (requeues, failures and killed attempts
included, as the runner records them in the stage's manifest), in hours of wall time and of GPUs held, by kind of
work, beside the tokens generated and trained - so that a larger synthetic set can be weighed against its cost.

Who pays for a stage (the stated rule):
- an arm's own stages (its blend, train, export and eval stages, every seed) are its own;
- a source's stages (tokenize/<source>; for a synthetic set also seeds, passages, every generate shard, filter and
  render) are split among the arms that train on the source, in proportion to the tokens of it each trains on
  (summed over its seeds);
- the stages every arm needs (tokenizer, suite, decontam_index, the corpora's contamination checks, a
  continuation's base and its evaluation) are split equally.
A killed attempt ends at its folder's last write (runner.py); manifests from before attempts were recorded count
their last attempt only. With scales, each scale's report counts its own arms' stages and the shared data stages in
full (they were paid once for every scale).
"""

from __future__ import annotations

from harness.plan import Plan

WORK = {"seeds": "generation", "passages": "generation", "generate": "generation", "filter": "generation",
        "render": "generation", "blend": "training", "train": "training", "export": "evaluation",
        "eval": "evaluation"}  # anything else: data (tokenizer, tokenize, suite, index, contamination, base)
SOURCE_KINDS = ("tokenize", "seeds", "passages", "generate", "filter", "render")
ARM_KINDS = ("blend", "train", "export", "eval")
GROUPS = ("generation", "training", "evaluation", "data")


def stage_cost(manifest: dict) -> dict:
    """Hours of wall time and of GPUs held over a stage's attempts, and how many attempts it took."""
    attempts = manifest.get("attempts") or [{"seconds": manifest["timing"]["seconds"], "gpus": 0,
                                             "outcome": "done"}]
    hours = sum(a.get("seconds") or 0.0 for a in attempts) / 3600
    gpu_hours = sum((a.get("seconds") or 0.0) * a.get("gpus", 0) for a in attempts) / 3600
    return {"hours": hours, "gpu_hours": gpu_hours, "attempts": len(attempts),
            "repeated": sum(a["outcome"] != "done" for a in attempts)}


def collect(plan: Plan, recipe: dict, tokens_by_source: dict[str, dict[str, float]]) -> dict:
    """{"arms": {arm: {"by_work": {work: {hours, gpu_hours}}, hours, gpu_hours, attempts, repeated,
    tokens_generated, tokens_trained}}, "stages": {id: stage_cost}}; tokens_by_source: arm -> source -> tokens
    per seed (the report's token accounting)."""
    names = [a["name"] for a in recipe["arms"]]
    n_seeds = len(recipe["seeds"])
    arms = {n: {"by_work": {g: {"hours": 0.0, "gpu_hours": 0.0} for g in GROUPS}, "hours": 0.0, "gpu_hours": 0.0,
                "attempts": 0, "repeated": 0, "tokens_generated": 0.0,
                "tokens_trained": float(recipe["data"]["tokens"]) * n_seeds} for n in names}
    stages = {}
    for spec in plan.stages:
        if not plan.is_cached(spec):
            continue
        parts = spec.id.split("/")
        if spec.kind in ARM_KINDS and len(parts) > 2 and parts[1] not in arms:
            continue  # another scale's arm: that scale's report counts it
        manifest = plan.store.manifest(spec.kind, spec.digest)
        cost = stages[spec.id] = stage_cost(manifest)
        generated = (manifest["result"].get("requests") or {}).get("completion_tokens", 0) \
            if spec.kind == "generate" else 0
        if spec.kind in ARM_KINDS and len(parts) > 2:
            payers = {parts[1]: 1.0}
        elif spec.kind in SOURCE_KINDS and len(parts) > 1:
            use = {n: tokens_by_source.get(n, {}).get(parts[1], 0.0) for n in names}
            total = sum(use.values())
            payers = {n: u / total for n, u in use.items() if u > 0} if total else {}
        else:
            payers = {n: 1 / len(names) for n in names}
        for n, share in payers.items():
            a = arms[n]
            work = a["by_work"][WORK.get(spec.kind, "data")]
            for k in ("hours", "gpu_hours"):
                work[k] += share * cost[k]
                a[k] += share * cost[k]
            a["tokens_generated"] += share * generated
            if spec.kind in ARM_KINDS:  # attempts are counted on the arm's own stages
                a["attempts"] += cost["attempts"]
                a["repeated"] += cost["repeated"]
    return {"arms": arms, "stages": stages}


def table(costs: dict, deltas: dict[str, float | None], baseline: str, metric_label: str, scale: float) -> str:
    """Per arm: hours by kind of work, GPU hours, repeated attempts of its own stages, tokens generated and
    trained, and the delta against the baseline per extra hour."""
    gpu = any(a["gpu_hours"] > 0 for a in costs["arms"].values())
    unit = "GPU h" if gpu else "h"
    key = "gpu_hours" if gpu else "hours"
    lines = ["### what it cost", "",
             f"Wall hours of every attempt ({'GPU hours: hours x GPUs held' if gpu else 'no GPU was held'}); shared "
             "stages split by the rule in README \"What it cost\". Last column: the delta of the average "
             f"{metric_label} against `{baseline}` per extra {unit} over the baseline's.", "",
             "| arm | " + " | ".join(f"{g} ({unit})" for g in GROUPS) + f" | total ({unit}) | repeated attempts | "
             "tokens generated | tokens trained | delta per extra " + unit + " |",
             "|---|" + "---|" * (len(GROUPS) + 5)]
    base = costs["arms"][baseline][key]
    for name, a in costs["arms"].items():
        extra = a[key] - base
        d = deltas.get(name)
        per = "-" if name == baseline or d is None or extra <= 0 else f"{d * scale / extra:+.3g}"
        lines.append(f"| {name} | " + " | ".join(f"{a['by_work'][g][key]:.3f}" for g in GROUPS) +
                     f" | {a[key]:.3f} | {a['repeated']} | {a['tokens_generated']:,.0f} | {a['tokens_trained']:,.0f} "
                     f"| {per} |")
    return "\n".join(lines) + "\n"
