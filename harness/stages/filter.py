"""Stages `decontam_index` (an n-gram index over every eval split of the suite), `filter` (dedup within the set
and against its seeds, then decontamination; a report per eval task) and `contamination` (the same check over a
base corpus, report only)."""

from __future__ import annotations

import collections
import heapq
import json
from pathlib import Path
from typing import Iterator

from harness.data.readers import ReadStats, read_corpus
from harness.filters import decontam
from harness.stages import Stage, StageContext, read_jsonl, register


def _report_md(title: str, per_task: dict, what: str) -> str:
    lines = [f"# {title}", "", f"| eval task | eval items matched | {what} | example match (n-gram, or ~similarity: "
             f"the fuzzy stage's stretch) |", "|---|---:|---:|---|"]
    for task, r in per_task.items():
        ex = r["examples"][0]["ngram"] if r["examples"] else ""
        lines.append(f"| {task} | {r['matched_eval_items']} | {r.get('dropped', r.get('documents'))} | {ex} |")
    if not per_task:
        lines.append("| (none) | 0 | 0 | |")
    return "\n".join(lines) + "\n"


def _flagged_md(path, limit: int = 200) -> str:
    """The dropped items, each with the seed (or passage) it was written from and the eval items it matches."""
    lines = ["", "## Dropped items and what they came from", "",
             "| item | seed or passage | eval items matched | matched by |", "|---|---|---|---|"]
    n = 0
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            n += 1
            if n <= limit:
                lines.append(f"| {r['item_id']} | {r.get('seed_id') or r.get('passage_id')} | "
                             f"{', '.join(r['contaminates'][:5])} | {r.get('matched_by', 'ngram')} |")
    if n > limit:
        lines.append(f"| ... {n - limit} more in contaminated.jsonl | | | |")
    return "\n".join(lines) + "\n" if n else ""


@register
class DecontamIndexStage(Stage):
    kind = "decontam_index"
    version = 2  # the fuzzy stage's index beside the n-gram index

    def run(self, ctx: StageContext) -> dict:
        from harness import buildcache
        from harness.filters import fuzzy, text

        cfg = ctx.spec.config
        data = (ctx.inputs["suite"] / ctx.manifests["suite"]["result"]["tasks"]).parent / "data"

        def build(folder: Path) -> None:
            evals, train = [], []
            for f in sorted(data.glob("*/*.jsonl")):
                task, split = f.parent.name, f.stem
                rows = [{**r, "task": task, "split": split} for r in read_jsonl(f)]
                (train if split == "train" else evals).extend(rows)
            index = decontam.build(evals, train, cfg["ngram"], cfg["ngram_min"], cfg["max_item_freq"],
                                   cfg.get("fuzzy"))
            index.save(folder)
            (folder / "stats.json").write_text(json.dumps({"eval_items": len(evals), **index.stats}))

        cached = buildcache.fetch_or_build("decontam_index", buildcache.key(ctx.spec.digest, decontam, fuzzy, text),
                                           ctx.workdir / "index", build)
        stats = json.loads((ctx.workdir / "index" / "stats.json").read_text())
        ctx.log.info("index over %d eval items%s: %s", stats.pop("eval_items"),
                     " (from the machine's build cache)" if cached else "", stats)
        return {"dir": "index", **stats}


def _shard_items(ctx: StageContext) -> tuple[list[str], Iterator[dict], dict]:
    """The generated items of one stage, or of all shards merged in item-id order (a k-way merge of the shards'
    files, each in item-id order: one item per shard in memory), with the generation counts summed."""
    from harness.filters import dedup  # datasketch (and scipy) take a third of a second to import

    names = sorted((n for n in ctx.inputs if n == "items" or n.startswith("items.")),
                   key=lambda n: int(n.partition(".")[2] or 0))
    streams = [dedup.in_item_order(_rows(ctx, n), lambda n=n: f"{ctx.spec.deps[n]} items.jsonl") for n in names]
    items = heapq.merge(*streams, key=lambda it: it["item_id"]) if len(streams) > 1 else streams[0]
    total: dict = {}
    for n in names:
        for key, val in ctx.manifests[n]["result"].items():
            if key in ("seeds", "passages", "generations", "parsed", "after_screen", "kept"):
                total[key] = total.get(key, 0) + val
            elif key in ("malformed", "screened", "verification"):
                total[key] = dict(collections.Counter(total.get(key, {})) + collections.Counter(val))
            elif key == "verification_by_type":  # summed counts per item type
                per = total.setdefault(key, {})
                for t, c in val.items():
                    per[t] = dict(collections.Counter(per.get(t, {})) + collections.Counter(c))
    return names, items, {"shards": len(names), **total}


def _rows(ctx: StageContext, name: str) -> Iterator[dict]:
    with open(ctx.inputs[name] / ctx.manifests[name]["result"]["file"]) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


@register
class FilterStage(Stage):
    kind = "filter"
    version = 4  # the fuzzy stage after the n-gram stage; dropped items say which stage matched them

    def run(self, ctx: StageContext) -> dict:
        from harness.filters import dedup

        cfg = ctx.spec.config
        _, items, generated = _shard_items(ctx)
        seeds = _rows(ctx, "seeds") if "seeds" in ctx.inputs else []
        dd = dedup.Deduplicator(seeds, cfg["dedup_threshold"])
        check = decontam.ItemCheck(decontam.Index.load(ctx.inputs["index"] / "index")) if cfg["decontaminate"] \
            else None
        n_in = n_dedup = n_dropped = n = 0
        with open(ctx.workdir / "items.jsonl", "w") as out, open(ctx.workdir / "contaminated.jsonl", "w") as bad:
            for batch in dedup.batched(items):
                n_in += len(batch)
                kept = dd.batch(batch)
                n_dedup += len(kept)
                if check is not None:
                    kept, dropped = check.batch(kept)
                    n_dropped += len(dropped)
                    bad.writelines(json.dumps(r) + "\n" for r in dropped)
                passed = ["deduplicated"] + (["decontaminated"] if check is not None else [])
                out.writelines(json.dumps({**r, "filters": r.get("filters", []) + passed}) + "\n" for r in kept)
                n += len(kept)
        if check is None:
            (ctx.workdir / "contaminated.jsonl").unlink()
        report = check.finish() if check is not None else {}
        ctx.log.info("dedup: %d of %d kept; %s (%.0f MB of keys)", n_dedup, n_in, dict(dd.dropped), dd.nbytes / 2**20)
        (ctx.workdir / "contamination.json").write_text(json.dumps(report, indent=1))
        (ctx.workdir / "contamination.md").write_text(
            _report_md("Synthetic items matching eval items", report, "synthetic items dropped")
            + (_flagged_md(ctx.workdir / "contaminated.jsonl") if check is not None else ""))
        ctx.log.info("decontamination: %d dropped; %d items kept", n_dropped, n)
        return {"file": "items.jsonl", "generated": generated, "input": n_in, "deduplicated": dict(dd.dropped),
                "after_dedup": n_dedup, "decontaminated": n_dropped,
                "decontaminated_by": dict(check.by) if check is not None else {}, "kept": n,
                "dedup_key_bytes": dd.nbytes,
                "contamination": {t: {k: v for k, v in r.items() if k not in decontam.DETAIL}
                                  for t, r in report.items()}}


@register
class ContaminationStage(Stage):
    kind = "contamination"
    version = 3  # the fuzzy stage's matches too

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
        return {"documents": rep["documents"], "words": rep["words"], "matched_by": rep["matched_by"],
                "per_task": {t: {k: v for k, v in r.items() if k not in decontam.DETAIL}
                             for t, r in rep["per_task"].items()}}
