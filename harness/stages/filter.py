"""Stages `decontam_index` (an n-gram index over every eval split of the suite), `filter` (dedup within the set
and against its seeds, then decontamination; a report per eval task) and `contamination` (the same check over a
base corpus, report only)."""

from __future__ import annotations

import collections
import json

from harness.data.readers import ReadStats, read_corpus
from harness.filters import decontam
from harness.stages import Stage, StageContext, read_jsonl, register, write_jsonl


def _report_md(title: str, per_task: dict, what: str) -> str:
    lines = [f"# {title}", "", f"| eval task | eval items matched | {what} | example n-gram |", "|---|---:|---:|---|"]
    for task, r in per_task.items():
        ex = r["examples"][0]["ngram"] if r["examples"] else ""
        lines.append(f"| {task} | {r['matched_eval_items']} | {r.get('dropped', r.get('documents'))} | {ex} |")
    if not per_task:
        lines.append("| (none) | 0 | 0 | |")
    return "\n".join(lines) + "\n"


@register
class DecontamIndexStage(Stage):
    kind = "decontam_index"

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.spec.config
        data = (ctx.inputs["suite"] / ctx.manifests["suite"]["result"]["tasks"]).parent / "data"
        evals, train = [], []
        for f in sorted(data.glob("*/*.jsonl")):
            task, split = f.parent.name, f.stem
            rows = [{**r, "task": task, "split": split} for r in read_jsonl(f)]
            (train if split == "train" else evals).extend(rows)
        index = decontam.build(evals, train, cfg["ngram"], cfg["ngram_min"], cfg["max_item_freq"])
        index.save(ctx.workdir / "index")
        ctx.log.info("index over %d eval items: %s", len(evals), index.stats)
        return {"dir": "index", **index.stats}


def _merged_items(ctx: StageContext) -> tuple[list[dict], dict]:
    """The generated items of one stage, or of all shards in request order (as one stage would have written them),
    with the generation counts summed over the shards."""
    names = sorted((n for n in ctx.inputs if n == "items" or n.startswith("items.")),
                   key=lambda n: int(n.partition(".")[2] or 0))
    items = [it for n in names for it in ctx.input_rows(n)]
    if len(names) > 1:
        items.sort(key=lambda it: it["request"])  # stable: the pairs of one request keep their order
    total: dict = {}
    for n in names:
        for key, val in ctx.manifests[n]["result"].items():
            if key in ("seeds", "passages", "generations", "parsed", "kept"):
                total[key] = total.get(key, 0) + val
            elif key in ("malformed", "verification"):
                total[key] = dict(collections.Counter(total.get(key, {})) + collections.Counter(val))
    return items, {"shards": len(names), **total}


@register
class FilterStage(Stage):
    kind = "filter"

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.spec.config
        items, generated = _merged_items(ctx)
        seeds = ctx.input_rows("seeds") if "seeds" in ctx.inputs else []
        from harness.filters import dedup  # datasketch (and scipy) take a third of a second to import

        kept, dup = dedup.dedup(items, seeds, cfg["dedup_threshold"])
        ctx.log.info("dedup: %d of %d kept; %s", len(kept), len(items), dict(dup))
        report, dropped = {}, []
        if cfg["decontaminate"]:
            index = decontam.Index.load(ctx.inputs["index"] / "index")
            kept, dropped, report = decontam.check_items(index, kept)
            write_jsonl(ctx.workdir / "contaminated.jsonl", dropped)
        (ctx.workdir / "contamination.json").write_text(json.dumps(report, indent=1))
        (ctx.workdir / "contamination.md").write_text(_report_md("Synthetic items matching eval items", report,
                                                                 "synthetic items dropped"))
        n = write_jsonl(ctx.workdir / "items.jsonl", kept)
        ctx.log.info("decontamination: %d dropped; %d items kept", len(dropped), n)
        return {"file": "items.jsonl", "generated": generated, "input": len(items), "deduplicated": dict(dup),
                "after_dedup": len(items) - sum(dup.values()), "decontaminated": len(dropped), "kept": n,
                "contamination": {t: {k: v for k, v in r.items() if k not in decontam.DETAIL}
                                  for t, r in report.items()}}


@register
class ContaminationStage(Stage):
    kind = "contamination"
    version = 2  # contamination.json lists the matched eval items

    def run(self, ctx: StageContext) -> dict:
        rt = ctx.spec.runtime
        index = decontam.Index.load(ctx.inputs["index"] / "index")
        stats = ReadStats()
        rep = decontam.check_documents(index, read_corpus(rt["files"], rt["format"], rt["text_field"], stats))
        (ctx.workdir / "contamination.json").write_text(json.dumps(rep, indent=1))
        (ctx.workdir / "contamination.md").write_text(_report_md(f"Base corpus documents matching eval items "
                                                                 f"({rep['documents']} documents)",
                                                                 rep["per_task"], "documents"))
        for task, r in rep["per_task"].items():
            ctx.log.info("%s: %d eval items matched by %d documents", task, r["matched_eval_items"], r["documents"])
        return {"documents": rep["documents"], "words": rep["words"],
                "per_task": {t: {k: v for k, v in r.items() if k not in decontam.DETAIL}
                             for t, r in rep["per_task"].items()}}
