"""Stages `seeds` (train-split seeds of lm-eval tasks in one schema) and `render` (items rendered as pretraining
text: the seed-rendering control, which asks whether generation adds anything over the training data it starts
from)."""

from __future__ import annotations

import json

from harness.data.blend import estimate_problem
from harness.seeds import collect, render
from harness.stages import Stage, StageContext, register, write_jsonl


@register
class SeedsStage(Stage):
    kind = "seeds"
    version = 2  # answers as text whatever the prompt shape (letters, "Q:/A:", partial scoring); descriptions

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.spec.config
        tasks_dir = ctx.inputs["suite"] / ctx.manifests["suite"]["result"]["tasks"]
        records, counts = collect.collect(str(tasks_dir), cfg["tasks"], cfg["per_task_cap"], cfg["sample_seed"],
                                          cfg.get("per_group_cap"), cfg.get("stratify", "equal"),
                                          cfg.get("categories"))
        est = ctx.spec.runtime.get("estimate")
        if est:  # the set's size against the largest share it must fill, before any generation is spent
            problem = estimate_problem(est["set"], len(records) * est["samples_per_seed"], est["tokens_per_request"],
                                       est["shares"], est["tokens"], est["max_epochs"])
            if problem:
                raise ValueError(problem)
            ctx.log.info("synthetic.%s: about %s tokens expected from %d requests", est["set"],
                         f"{len(records) * est['samples_per_seed'] * est['tokens_per_request']:,.0f}",
                         len(records) * est["samples_per_seed"])
        write_jsonl(ctx.workdir / "seeds.jsonl", records)
        for task, c in counts["per_task"].items():
            ctx.log.info("%s: %d seeds of %d train docs", task, c["seeds"], c["train_docs"])
        for cat, c in counts.get("per_category", {}).items():
            ctx.log.info("category %s: %d seeds (budget %s) from %d tasks", cat, c["seeds"], c["budget"], c["tasks"])
        return {"seeds": len(records), **counts, "file": "seeds.jsonl"}


@register
class RenderStage(Stage):
    kind = "render"
    version = 3  # inline options (the unseeded control) rendered shuffled; positions only of options shown

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.spec.config
        items = ctx.input_rows("items")
        if not items:
            m = ctx.manifests["items"]
            raise ValueError(f"nothing to render: {m['stage']} kept no item ({json.dumps(m['result'])[:600]}); "
                             f"generate more (samples_per_seed, per_task_cap, passages) or loosen the filters")
        docs, shown = render.render(items, cfg["layout"], cfg["items_per_doc"], cfg["seed"])
        write_jsonl(ctx.workdir / "data.jsonl", ({"text": d} for d in docs))
        ctx.log.info("rendered %d of %d items into %d documents (layout %s); answer positions %s", shown["items"],
                     len(items), len(docs), cfg["layout"], shown["answer_positions"])
        return {"items": len(items), "rendered_items": shown["items"], "documents": len(docs), "file": "data.jsonl",
                "answer_positions": shown["answer_positions"]}
