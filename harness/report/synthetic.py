"""The synthetic sets beside the scores: how each was made and what survived each check - generations, parsed,
screened (items pointing at a passage they lack, near-copies of their seed), verified, kept by the filter,
rendered - and where the answers sit among the options as rendered. A reviewer reads the data's quality here
without opening a manifest."""

from __future__ import annotations

from harness.generation import verification
from harness.plan import Plan
from harness.seeds.render import LETTERS


def _result(plan: Plan, sid: str) -> dict | None:
    if not any(s.id == sid for s in plan.stages):
        return None
    spec = plan.by_id(sid)
    return plan.store.manifest(spec.kind, spec.digest)["result"] if plan.is_cached(spec) else None


def collect(plan: Plan, recipe: dict) -> dict:
    """{set: its figures} for every synthetic set an arm uses."""
    synthetic = recipe.get("synthetic", {})
    used = sorted({s for a in recipe["arms"] for s, v in a["mix"].items() if v > 0 and s in synthetic})
    out = {}
    for name in used:
        syn = recipe["synthetic"][name]
        render = _result(plan, f"render/{name}") or {}
        row: dict = {"kind": syn["kind"], "rendered": render.get("rendered_items", render.get("items")),
                     "answer_positions": render.get("answer_positions")}
        filt = _result(plan, f"filter/{name}")
        if filt:
            g = filt["generated"]
            screened = g.get("screened", {})
            verdicts = g.get("verification", {})
            checked = verdicts.get("verified", 0) + verdicts.get("failed_verification", 0)
            row.update(generations=g.get("generations"), parsed=g.get("parsed"), screened=screened,
                       near_copies=screened.get("copied_seed_options", 0) + screened.get("copied_seed_passage", 0),
                       verified=verdicts.get("verified", 0), verification_checked=checked,
                       unverified=verdicts.get("unverified", 0), after_filter=filt["kept"],
                       deduplicated=sum(filt["deduplicated"].values()), decontaminated=filt["decontaminated"],
                       by_type=verification.summary(g.get("verification_by_type", {})),
                       protocol=verification.describe(verification.VerificationConfig(**syn.get("verification", {})),
                                                      (recipe.get("verifier") or {}).get("model")))
        tok = _result(plan, f"tokenize/{name}")
        if tok and row.get("generations"):  # what a pilot measures for synthetic.<set>.tokens_per_request
            row["tokens"] = tok["tokens"]
            row["tokens_per_request"] = round(tok["tokens"] / row["generations"], 1)
        out[name] = row
    return out


def _rate(n, d) -> str:
    return f"{n:,} ({n / d:.0%})" if d else f"{n:,}"


def _positions(p: dict | None) -> str:
    """The answers' positions per option count (the most common first), as shares A/B/C/...; "-" where no option
    is shown."""
    if not p:
        return "-"
    shown = []
    for n, counts in sorted(p.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(counts.values())
        shares = "/".join(f"{counts.get(L, 0) / total:.0%}" for L in LETTERS[:int(n)])
        shown.append(f"{n} options: {shares}" + (f" ({total:,})" if len(p) > 1 else ""))
    return "; ".join(shown)


def table(sets: dict) -> str:
    lines = ["### synthetic sets: what each check kept", "",
             "| set | kind | generations | parsed | screened out (near-copies: of parsed) | verified (of checked) | "
             "after dedup and decontamination | rendered | answer positions | tokens per request |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, r in sets.items():
        if "generations" not in r:
            lines.append(f"| {name} | {r['kind']} | - | - | - | - | - | {r['rendered'] or 0:,} | "
                         f"{_positions(r['answer_positions'])} | - |")
            continue
        screened = sum(r["screened"].values())
        verified = (_rate(r["verified"], r["verification_checked"]) if r["verification_checked"]
                    else "none")
        if r["unverified"]:  # verification off, or open answers left unchecked (open_answers: false)
            verified += f"; {r['unverified']:,} not verified"
        # a request of the unseeded control asks for several pairs: its parsed count is pairs, not a rate
        parsed = _rate(r["parsed"], r["generations"]) if r["kind"] != "unseeded_qa" else f"{r['parsed']:,} pairs"
        lines.append(f"| {name} | {r['kind']} | {r['generations']:,} | {parsed} | "
                     f"{screened:,} ({r['near_copies']:,}: {r['near_copies'] / max(1, r['parsed']):.0%}) | {verified} | "
                     f"{r['after_filter']:,} | "
                     f"{r['rendered'] or 0:,} | {_positions(r['answer_positions'])} | "
                     f"{r.get('tokens_per_request', '-')} |")
    if not sets:
        lines.append("| (none) | | | | | | | | | |")
    checked = {n: r for n, r in sets.items() if r.get("by_type")}
    if checked:
        lines += ["", "### verification by item type", "",
                  "| set | protocol | item type | checked | passed | agreement among votes | unanimous | votes "
                  "unparsed |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for name, r in checked.items():
            for t, c in r["by_type"].items():
                lines.append(f"| {name} | {r['protocol']} | {t} | {c['checked']:,} | {_rate(c['passed'], c['checked'])}"
                             f" | {c['agreement']:.0%} | {c['unanimous']:,} | {c['votes_unparsed']:.0%} |")
    return "\n".join(lines) + "\n"
