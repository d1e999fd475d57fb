"""Stages `tokenizer` (train a byte-level BPE on the corpus, or adopt a tokenizer.json) and `tokenize` (a source
into Megatron's .bin/.idx)."""

from __future__ import annotations

import shutil
import time

from harness.data import tokenize as tk
from harness.data.readers import ReadStats, read_corpus
from harness.data.tokenizer import describe, tokenizer_file, train_bpe
from harness.stages import Stage, StageContext, register


@register
class TokenizerStage(Stage):
    kind = "tokenizer"

    def run(self, ctx: StageContext) -> dict:
        cfg, rt = ctx.spec.config, ctx.spec.runtime
        out = ctx.workdir / "tokenizer.json"
        if cfg["kind"] == "base":  # continuation arms: the base's tokenizer and document separator
            shutil.copyfile(ctx.inputs["base"] / "tokenizer.json", out)
            info = describe(out, ctx.manifests["base"]["result"]["eod_token"])
            ctx.log.info("the base's tokenizer: vocabulary %d, EOD %s (id %d)", info["vocab_size"], info["eod_token"],
                         info["eod_id"])
            return info
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
        result, bar = tk.tokenize_files(files, rt["format"], rt["text_field"],
                                        str(ctx.inputs["tokenizer"] / "tokenizer.json"), tok, str(ctx.workdir),
                                        ctx.workdir / "tokens", rt["workers"], rt.get("threads") or 0,
                                        rt["shard_bytes"], ctx.spec.id, ctx.log.info)
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
