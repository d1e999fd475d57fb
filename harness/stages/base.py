"""Stage `base` (continuation arms): the pretrained base imported once into a megatron.core checkpoint, its logits
checked against transformers, exported back (the round trip must return its weights exactly) - the start of every
arm's training, and itself evaluated as the report's base row."""

from __future__ import annotations

import json

from harness.stages import Stage, StageContext, register


@register
class BaseStage(Stage):
    kind = "base"

    def run(self, ctx: StageContext) -> dict:
        from harness.training import base

        cfg, rt = ctx.spec.config, ctx.spec.runtime
        b = base.BaseConfig(from_=rt["from"], revision=rt.get("revision"), eod_token=cfg.get("eod_token"),
                            check_positions=cfg["check_positions"], check_tolerance=cfg["check_tolerance"])
        mg = base.megatron_source(b.from_) if base.is_local(b.from_) else None
        if mg is not None:  # one of our training runs
            ctx.log.info("base %s: checkpoint %s", b.from_, mg[1])
            result = base.import_megatron(*mg, ctx.workdir, cfg["seq_length"], ctx.log.info)
            origin = {"megatron": str(mg[1])}
        else:
            folder, origin = base.resolve(b)  # a hub base is checked here, before any training
            ctx.log.info("base %s from %s", b.from_, folder)
            result = base.import_base(folder, ctx.workdir, cfg["seq_length"], base.eod_token(folder, b.eod_token),
                                      b.check_positions, b.check_tolerance, ctx.log.info)
        # the published paths: train stages and evaluation read the spec from the final folder
        spec = json.loads((ctx.workdir / "train_spec.json").read_text())
        spec["tokenizer"]["path"] = str(ctx.final_dir / "tokenizer.json")
        spec["base"]["hf"] = str(ctx.final_dir / "hf-base")
        (ctx.workdir / "train_spec.json").write_text(json.dumps(spec, indent=2))
        return {**result, "origin": origin}
