"""Stage `blend`: an arm's mixture of tokenized sources under the token budget, built and checked with
megatron.core's BlendedMegatronDatasetBuilder. Its cache folder holds megatron's sample indices, which training
reuses (same config, same cache: same sample order)."""

from __future__ import annotations

import json

from harness.data import blend as bl
from harness.data.tokenizer import MegatronTokenizer
from harness.stages import Stage, StageContext, register


def tokenized_prefix(ctx: StageContext, source: str) -> str:
    return str(ctx.inputs[source] / ctx.manifests[source]["result"]["prefix"])


@register
class BlendStage(Stage):
    kind = "blend"

    def run(self, ctx: StageContext) -> dict:
        cfg = ctx.spec.config
        sources = {name: tokenized_prefix(ctx, name) for name in cfg["mix"]}
        plans = bl.plan_blend(sources, cfg["mix"], cfg["tokens"], cfg["split"], cfg["max_epochs"])
        for p in plans:
            ctx.log.info("%s: share %.4f, %s of %s training tokens, %.2f epochs", p.name, p.share,
                         f"{p.target_tokens:,}", f"{p.available_tokens:,}", p.epochs)
        tok_info = ctx.manifests["tokenizer"]["result"]
        tokenizer = MegatronTokenizer(ctx.inputs["tokenizer"] / "tokenizer.json", tok_info["eod_id"],
                                      tok_info["vocab_size"])
        train, realised = bl.build_checked(plans, cfg["tokens"], cfg["seq_length"], cfg["split"], cfg["seed"],
                                           str(ctx.workdir / "cache"), tokenizer)
        for p in plans:
            ctx.log.info("%s: realised share %.5f (target %.5f)", p.name, realised[p.name], p.share)
        result = {
            "samples": len(train),
            "seq_length": cfg["seq_length"],
            "tokens": len(train) * cfg["seq_length"],
            "seed": cfg["seed"],
            "split": cfg["split"],
            "sources": [{"name": p.name, "prefix": p.prefix, "share": p.share, "realised_share": realised[p.name],
                         "target_tokens": p.target_tokens, "available_tokens": p.available_tokens,
                         "epochs": round(p.epochs, 4)} for p in plans],
        }
        (ctx.workdir / "blend.json").write_text(json.dumps(result, indent=2))
        return result
