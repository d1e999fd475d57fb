"""Stage `generate`: seeds (task_seeded) or corpus passages (unseeded_qa) -> parsed, enriched, verified Q&A items.

Every completion goes through the store's request cache, so a stage killed midway and rerun asks the server only
for what is missing, and its output - assembled in key order at the end - has no duplicate and no gap."""

from __future__ import annotations

import collections
from contextlib import ExitStack, closing
from pathlib import Path

from harness.generation import models, pipeline, verification
from harness.generation.backends import BackendOptions, make
from harness.generation.cache import RequestCache
from harness.generation.driver import Driver
from harness.generation.config import engine_kwargs, serve_args
from harness.generation.passages import PassageFile
from harness.generation.prompts import Templates
from harness.generation.server import ManagedServer, transformers_cache_args
from harness.stages import Stage, StageContext, register, write_jsonl


def _backend_factory(gen: dict, rt: dict, workdir, served: dict, log_name: str = "server.log"):
    """A function making the backend on first need (starting a managed server inside the driver's ExitStack)."""

    def make_backend(stack: ExitStack):
        model = models.resolve(gen["model"])
        if gen["model"] in models.CATALOGUE:
            model = str(models.prepare(gen["model"]))
        url, vllm = rt["server"], rt.get("vllm") or {}
        if gen["backend"] == "openai" and url == "managed":
            kind = rt["server_kind"]
            server = ManagedServer(kind, model, workdir / log_name, startup_timeout=rt["startup_timeout"],
                                   extra_args=serve_args(vllm) if kind == "vllm" else
                                   transformers_cache_args(rt["concurrency"], gen["max_tokens"]),
                                   offline=rt.get("offline"), env_dir=vllm.get("env") if kind == "vllm" else None)
            stack.enter_context(server)
            url = server.base_url
            served.update(pid=server.proc.pid, url=url, log=str(server.log_path.name), cmd=server.cmd)
        chunk = {"vllm": vllm.get("chunk_size"), "transformers": gen.get("batch_size"),
                 "ctranslate2": gen.get("batch_size")}.get(gen["backend"])
        opts = BackendOptions(model=model, base_url=url, concurrency=rt["concurrency"], timeout=rt["timeout"],
                              max_retries=rt["max_retries"], batch_size=gen.get("batch_size") or 16,
                              chunk_size=chunk, engine=engine_kwargs(vllm) if vllm else {})
        return make(gen["backend"], opts)

    return make_backend


@register
class GenerateStage(Stage):
    kind = "generate"
    version = 5  # the unseeded control's pairs typed (inline options, yes/no) and verified as seeded items are

    def run(self, ctx: StageContext) -> dict:
        cfg, rt = ctx.spec.config, ctx.spec.runtime
        gen = cfg["generator"]
        tpl = Templates(rt.get("templates"))
        samp = pipeline.Sampling(gen["temperature"], gen["top_p"], gen["max_tokens"], cfg["seed"],
                                 gen.get("prefill", False))
        shard = (cfg["shard"], cfg["shards"]) if "shards" in cfg else None
        passages = PassageFile(ctx.inputs["passages"]) if "passages" in ctx.inputs else None
        seeds = ctx.input_rows("seeds") if cfg["kind"] == "task_seeded" else []
        if cfg["kind"] == "task_seeded":
            reqs, meta = pipeline.seeded_requests(seeds, cfg, tpl, passages, samp, shard)
        else:
            reqs, meta = pipeline.unseeded_requests(passages, cfg, tpl, samp, shard)
        if shard:
            ctx.log.info("shard %d of %d: %d requests", *shard, len(reqs))

        cache = RequestCache.for_stage(Path(rt["cache_dir"]), rt["cache_name"], cfg["model_id"],
                                       legacy=Path(rt["legacy_cache"]))
        served: dict = {}
        verifier_served: dict = {}
        stack = ExitStack()  # the verifier's driver and cache, when it has its own
        driver = Driver(cache, _backend_factory(gen, rt, ctx.workdir, served), ctx.log)
        try:
            got = driver.run("generate", reqs)
            write_jsonl(ctx.workdir / "generations.jsonl",
                        ({"key": r.key, **meta[r.key], "text": r.prefill + got[r.key].text, "error": got[r.key].error,
                          "completion_tokens": got[r.key].completion_tokens} for r in reqs))
            items, dropped = pipeline.parse_round(got, meta, cfg["pairs_per_passage"] if cfg["kind"] ==
                                                  "unseeded_qa" else 0)
            ctx.log.info("parsed %d items; malformed: %s", len(items), dict(dropped))
            if passages is not None:
                pipeline.ground(items, passages)
            parsed = len(items)
            items, screened = pipeline.screen(items, {s["seed_id"]: s for s in seeds})
            ctx.log.info("screened: %d kept; dropped %s", len(items), dict(screened))
            enriched = pipeline.enrich(items, driver, tpl, samp) if cfg["enrich"] else collections.Counter()
            voter = driver
            if "verifier" in cfg:  # a model of its own votes; the generator's server leaves the GPU first
                driver.close()
                vcache = stack.enter_context(closing(RequestCache.for_stage(
                    Path(rt["cache_dir"]), rt["cache_name"], cfg["verifier"]["model_id"],
                    legacy=Path(rt["legacy_cache"]))))
                voter = Driver(vcache, _backend_factory(cfg["verifier"], rt["verifier"], ctx.workdir, verifier_served,
                                                        "verifier_server.log"), ctx.log)
                stack.callback(voter.close)
            checked = verification.verify(items, verification.VerificationConfig(**cfg["verification"]), voter, tpl,
                                          samp)
        finally:
            driver.close()
            cache.close()
            stack.close()
        # in item-id order: the filter merges the shards' files by item id without loading them
        kept = sorted((it for it in items if it.get("verified") is not False), key=lambda it: it["item_id"])
        by_key = {r.key: r for r in reqs}
        for it in kept:  # lineage: what wrote it, from which prompt, and the checks it passed so far
            template = "unseeded_qa" if cfg["kind"] == "unseeded_qa" else f"similar_{meta[it['request']]['type']}"
            it["provenance"] = {"generator": cfg["model_id"], "template": template,
                                "template_sha": cfg["templates"].get(template),
                                "prompt_sha": pipeline.prompt_sha(by_key[it["request"]]),
                                "sample": int(it["item_id"].split("#")[1].split(".")[0])}
            it["filters"] = ["parsed", "screened"] + (["verified"] if it.get("verified") else [])
        write_jsonl(ctx.workdir / "items.jsonl", kept)
        per_task = collections.defaultdict(collections.Counter)
        for it in items:  # parsed: past the screen
            per_task[it["task"]]["parsed"] += 1
            per_task[it["task"]]["kept"] += it.get("verified") is not False
        ctx.log.info("verification: %s; %d items kept", dict(checked["counts"]), len(kept))
        shard = {"shard": [cfg["shard"], cfg["shards"]]} if "shards" in cfg else {}
        return {"file": "items.jsonl", **shard, "seeds": len({m["seed_id"] for m in meta.values()} - {None}),
                "passages": len({m["passage_id"] for m in meta.values()} - {None}), "generations": len(reqs),
                "parsed": parsed, "malformed": dict(sorted(dropped.items())),
                "screened": dict(sorted(screened.items())),
                "after_screen": parsed - sum(screened.values()),
                "near_copy_rate": pipeline.near_copy_rate(screened, parsed),
                "grounded": sum(bool(it.get("passage_id")) for it in items), "enrichment": dict(enriched),
                "verification": dict(checked["counts"]), "verification_by_type": checked["per_type"],
                "kept": len(kept),
                "per_task": {t: dict(c) for t, c in sorted(per_task.items())},
                "requests": {**driver.counts, "cache_journal": cache.journal, "cache_file": cache.path.name,
                             "found_in_other_caches": cache.found_elsewhere},
                "retries": getattr(driver.backend, "retries", 0), "templates": cfg["templates"],
                "managed_server": served or None,
                **({"verifier": {"model_id": cfg["verifier"]["model_id"], "requests": voter.counts,
                                 "managed_server": verifier_served or None}} if "verifier" in cfg else {})}
