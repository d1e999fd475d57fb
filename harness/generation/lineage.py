"""An item's lineage, read back from the stages that made it (`harness show`): the seed it was written from (task,
split, index) or its passage, the generator, template and prompt hash, its sample index, what the generator
wrote, the votes, the filters it passed - or the check that dropped it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from harness.plan import Plan


def _rows(path: Path) -> Iterator[dict]:
    if path.is_file():
        with open(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def _find(path: Path, key: str, value: str) -> dict | None:
    return next((r for r in _rows(path) if r.get(key) == value), None)


def _published(plan: Plan, prefix: str) -> list[Path]:
    return [plan.dir(s) for s in plan.stages if (s.id == prefix or s.id.startswith(prefix + "/"))
            and plan.is_cached(s)]


def request_of(item_id: str) -> str:
    """The generation request's item id: an unseeded pair "doc3.p0#0.2" came from request "doc3.p0#0"."""
    base, _, sample = item_id.partition("#")
    return f"{base}#{sample.split('.')[0]}"


def find(plan: Plan, item_id: str) -> dict:
    """{set, status, item, seed, generation, dropped_by} of `item_id` in any synthetic set of the plan."""
    sets = sorted({s.id.split("/")[1] for s in plan.stages if s.kind == "generate"})
    for name in sets:
        gens = _published(plan, f"generate/{name}")
        generation = next((g for d in gens if (g := _find(d / "generations.jsonl", "item_id", request_of(item_id)))),
                          None)
        if generation is None:
            continue
        out: dict = {"set": name, "generation": generation, "item": None, "status": None, "dropped_by": None}
        filt = _published(plan, f"filter/{name}")
        if filt and (it := _find(filt[0] / "items.jsonl", "item_id", item_id)):
            out.update(item=it, status="kept")
        elif filt and (it := _find(filt[0] / "contaminated.jsonl", "item_id", item_id)):
            out.update(item=it, status="dropped",
                       dropped_by=f"decontamination, {it.get('matched_by', 'ngram')} stage (matches "
                                  f"{', '.join(it['contaminates'])})")
        elif (it := next((x for d in gens if (x := _find(d / "items.jsonl", "item_id", item_id))), None)):
            out.update(item=it, status="dropped" if filt else "generated (not filtered yet)",
                       dropped_by="near-duplicate (of another item or of a seed)" if filt else None)
        else:
            out.update(status="dropped", dropped_by="parsing, the screen or verification (see the generate stage's "
                                                    "manifest for the counts by reason)")
        seeds = _published(plan, f"seeds/{name}")
        seed_id = generation.get("seed_id")
        out["seed"] = _find(seeds[0] / "seeds.jsonl", "seed_id", seed_id) if seeds and seed_id else None
        return out
    raise KeyError(f"no generated item '{item_id}' in experiment '{plan.experiment}' "
                   f"(sets: {', '.join(sets) or 'none'})")
