"""Stages `tokenizer` (train a byte-level BPE on the corpus, or adopt a tokenizer.json) and `tokenize` (a source
into Megatron's .bin/.idx)."""

from __future__ import annotations

import shutil
import time

from harness.data import tokenize as tk
from harness.data.readers import ReadStats, plan_shards, read_corpus
from harness.data.tokenizer import describe, tokenizer_file, train_bpe
from harness.stages import Stage, StageContext, register


@register
class TokenizerStage(Stage):
    kind = "tokenizer"

    def run(self, ctx: StageContext) -> dict:
        cfg, rt = ctx.spec.config, ctx.spec.runtime
        out = ctx.workdir / "tokenizer.json"
        if cfg["kind"] == "hf":
            shutil.copyfile(tokenizer_file(rt["path"]), out)
            info = describe(out, cfg["eod_token"])
            ctx.log.info("adopted %s: vocabulary %d, EOD id %d", rt["path"], info["vocab_size"], info["eod_id"])
            return info
        stats = ReadStats()
        budget = cfg["train_bytes"]

        def texts():
            used = 0
            for corpus in rt["corpora"]:
                for text in read_corpus(corpus["paths"], corpus["format"], corpus["text_field"], stats):
                    yield text
                    used += len(text)
                    if used >= budget:
                        return

        info = train_bpe(texts(), cfg["vocab_size"], cfg["eod_token"], out)
        ctx.log.info("trained a byte-level BPE of %d tokens on %d documents", info["vocab_size"], stats.documents)
        return {**info, "train_documents": stats.documents, "train_malformed": stats.malformed}


@register
class TokenizeStage(Stage):
    kind = "tokenize"

    def run(self, ctx: StageContext) -> dict:
        rt = ctx.spec.runtime
        tok = ctx.manifests["tokenizer"]["result"]
        files = rt.get("files") or [str(ctx.inputs["source"] / ctx.manifests["source"]["result"]["file"])]
        rt = {**rt, "files": files}
        shards = plan_shards(files, rt["format"], rt["shard_bytes"])
        job = tk.TokenizeJob(str(ctx.inputs["tokenizer"] / "tokenizer.json"), tok["eod_id"], tok["vocab_size"],
                             rt["text_field"], str(ctx.workdir))
        threads = rt.get("threads") or tk.cpu_count()
        total = sum(s.nbytes for s in shards)
        ctx.log.info("tokenizing %d files (%s bytes) in %d shards with %d worker(s)", len(rt["files"]),
                     f"{total:,}", len(shards), rt["workers"])
        bar = tk.Progress(total, ctx.spec.id, ctx.log.info)
        try:
            tk.run_shards(job, shards, list(range(len(shards))), rt["workers"], threads, bar)
        finally:
            bar.close()
        result = tk.finalize(job, len(shards), ctx.workdir / "tokens")
        examples = "; ".join(f"{e['file']}:{e['line']}: {e['reason']}" for e in result["malformed_examples"][:3])
        if result["documents"] == 0:
            raise ValueError(f"source '{ctx.spec.id.split('/', 1)[1]}' has no valid document "
                             f"({result['malformed']} malformed, {result['empty']} empty)"
                             + (f": {examples}" if examples else ""))
        if result["malformed"]:
            ctx.log.warning("skipped %d malformed records, e.g. %s", result["malformed"], examples)
        rate = bar.tokens / max(1e-9, time.perf_counter() - bar.t0)  # this run's tokens (a resumed run did fewer)
        ctx.log.info("%s documents, %s tokens, %s tokens/s", f"{result['documents']:,}", f"{result['tokens']:,}",
                     f"{rate:,.0f}")
        return {**result, "prefix": "tokens"}
