"""Stage `generate`: seeds (task_seeded) or corpus passages (unseeded_qa) -> parsed, enriched, verified Q&A items.

Every completion goes through the store's request cache, so a stage killed midway and rerun asks the server only
for what is missing, and its output - assembled in key order at the end - has no duplicate and no gap."""

from __future__ import annotations

import collections
from contextlib import ExitStack
from pathlib import Path

from harness.generation import models, pipeline
from harness.generation.backends import BackendOptions, make
from harness.generation.cache import RequestCache
from harness.generation.driver import Driver
from harness.generation.passages import from_corpus
from harness.generation.prompts import Templates
from harness.generation.server import ManagedServer
from harness.stages import Stage, StageContext, register, write_jsonl


def _backend_factory(gen: dict, rt: dict, workdir, served: dict):
    """A function making the backend on first need (starting a managed server inside the driver's ExitStack)."""

    def make_backend(stack: ExitStack):
        model = models.resolve(gen["model"])
        if gen["model"] in models.CATALOGUE:
            model = str(models.prepare(gen["model"]))
        url = rt["server"]
        if gen["backend"] == "openai" and url == "managed":
            server = ManagedServer(rt["server_kind"], model, workdir / "server.log",
                                   startup_timeout=rt["startup_timeout"])
            stack.enter_context(server)
            url = server.base_url
            served.update(pid=server.proc.pid, url=url, log=str(server.log_path.name))
        opts = BackendOptions(model=model, base_url=url, concurrency=rt["concurrency"], timeout=rt["timeout"],
                              max_retries=rt["max_retries"], batch_size=gen.get("batch_size") or 16)
        return make(gen["backend"], opts)

    return make_backend


@register
class GenerateStage(Stage):
    kind = "generate"

    def run(self, ctx: StageContext) -> dict:
        cfg, rt = ctx.spec.config, ctx.spec.runtime
        gen = cfg["generator"]
        tpl = Templates(rt.get("templates"))
        samp = pipeline.Sampling(gen["temperature"], gen["top_p"], gen["max_tokens"], cfg["seed"])
        passages = []
        if rt.get("corpus"):
            c = rt["corpus"]
            passages, _ = from_corpus(c["files"], c["format"], c["text_field"], cfg["passages"], cfg["seed"])
            ctx.log.info("%d passages sampled from %s", len(passages), ", ".join(c["files"])[:200])
        seeds = ctx.input_rows("seeds") if "seeds" in ctx.inputs else []
        if cfg["kind"] == "task_seeded":
            reqs, meta = pipeline.seeded_requests(seeds, cfg, tpl, passages, samp)
        else:
            reqs, meta = pipeline.unseeded_requests(passages, cfg, tpl, samp)
        if "shards" in cfg:
            reqs = [r for r in reqs if pipeline.shard_of(meta[r.key], cfg["shards"]) == cfg["shard"]]
            meta = {r.key: meta[r.key] for r in reqs}
            ctx.log.info("shard %d of %d: %d requests", cfg["shard"], cfg["shards"], len(reqs))

        cache = RequestCache(Path(rt["request_cache"]), cfg["model_id"])
        served: dict = {}
        driver = Driver(cache, _backend_factory(gen, rt, ctx.workdir, served), ctx.log)
        try:
            got = driver.run("generate", reqs)
            write_jsonl(ctx.workdir / "generations.jsonl",
                        ({"key": r.key, **meta[r.key], "text": got[r.key].text, "error": got[r.key].error,
                          "completion_tokens": got[r.key].completion_tokens} for r in reqs))
            items, dropped = pipeline.parse_round(got, meta, cfg["pairs_per_passage"] if cfg["kind"] ==
                                                  "unseeded_qa" else 0)
            ctx.log.info("parsed %d items; malformed: %s", len(items), dict(dropped))
            enriched = pipeline.enrich(items, driver, tpl, samp) if cfg["enrich"] else collections.Counter()
            verdicts = pipeline.verify(items, cfg["verify_votes"], driver, tpl, samp)
        finally:
            driver.close()
            cache.close()
        kept = [it for it in items if it.get("verified") is not False]
        write_jsonl(ctx.workdir / "items.jsonl", kept)
        per_task = collections.defaultdict(collections.Counter)
        for it in items:
            per_task[it["task"]]["parsed"] += 1
            per_task[it["task"]]["kept"] += it.get("verified") is not False
        ctx.log.info("verification: %s; %d items kept", dict(verdicts), len(kept))
        shard = {"shard": [cfg["shard"], cfg["shards"]]} if "shards" in cfg else {}
        return {"file": "items.jsonl", **shard, "seeds": len({m["seed_id"] for m in meta.values()} - {None}),
                "passages": len({m["passage_id"] for m in meta.values()} - {None}), "generations": len(reqs),
                "parsed": len(items), "malformed": dict(sorted(dropped.items())), "enrichment": dict(enriched),
                "verification": dict(verdicts), "kept": len(kept),
                "per_task": {t: dict(c) for t, c in sorted(per_task.items())},
                "requests": {**driver.counts, "cache_journal": cache.journal},
                "retries": getattr(driver.backend, "retries", 0), "templates": cfg["templates"],
                "managed_server": served or None}
