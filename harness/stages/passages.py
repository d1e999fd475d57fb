"""Stage `passages`: the corpus passages one synthetic set grounds its requests in (or, for the unseeded control,
writes Q&A from), sampled once for all of its generation shards and sized to what its requests use."""

from __future__ import annotations

from harness.generation import passages
from harness.stages import Stage, StageContext, register


@register
class PassagesStage(Stage):
    kind = "passages"
    version = 2  # ids.txt beside the passages

    def run(self, ctx: StageContext) -> dict:
        cfg, rt = ctx.spec.config, ctx.spec.runtime
        n_seeds = ctx.manifests["seeds"]["result"]["seeds"] if "seeds" in ctx.inputs else 0
        n = passages.needed(cfg["kind"], cfg["count"], n_seeds, cfg["samples_per_seed"], cfg["context_share"])
        c = rt["corpus"]
        lines, stats = passages.sample_corpus(c["files"], c["format"], c["text_field"], n, cfg["seed"])
        kept = passages.write(lines, ctx.workdir)
        ctx.log.info("%d passages sampled (%d wanted) from %d documents of %s", kept, n, stats.documents,
                     ", ".join(c["files"])[:200])
        return {"file": "passages.jsonl", "passages": kept, "wanted": n, "documents": stats.documents}
