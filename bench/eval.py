"""Evaluation benchmark: items/s of our lm-eval model on the megatron checkpoint (`megatron_harness`) against
lm-eval's `hf` backend on the export of the same checkpoint, same tasks, same items, same batch size, in one run:
multiple-choice tasks (log-likelihoods) and generative tasks (greedy generation up to the task's stop strings,
megatron_harness with its KV cache), each with its own ratio.

    python bench/eval.py [--limit 200] [--store runs] [--experiment quickstart] [--kinds mc,generative] [--arm baseline]
    (after `make quickstart`, whose baseline checkpoint it uses; `--experiment generative_cpu`: the SmolLM2-135M
    continuation's, a model whose generations are not degenerate)

Items/s are timed from a loaded model (loading is printed apart: a megatron checkpoint takes longer to load than
a transformers folder, once per evaluation). Target: ratio >= 1.0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RUN = r"""
import json, sys, time, os
def main():
    import lm_eval, lm_eval.models
    import harness.evaluation.megatron_lm
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager
    tasks_dir, model, args, tasks, limit = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(","), int(sys.argv[5])
    tm = TaskManager(include_path=tasks_dir, include_defaults=False)
    t0 = time.perf_counter()
    lm = get_model(model).create_from_arg_string(args, {"batch_size": 32, "device": "cpu"})
    t1 = time.perf_counter()
    r = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit)
    items = sum(v.get("sample_len", 0) for k, v in r["results"].items() if k in tasks)
    print(json.dumps({"seconds": time.perf_counter() - t1, "load_seconds": t1 - t0, "items": items}))
if __name__ == "__main__":
    main()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--store", default=str(ROOT / "runs"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--experiment", default="quickstart")
    ap.add_argument("--kinds", default="mc,generative")
    ap.add_argument("--arm", default="baseline", help="whose seed-1 checkpoint and export are evaluated")
    ap.add_argument("--mc-tasks", default="offline_arc_easy,offline_hellaswag,offline_piqa,offline_sciq")
    ap.add_argument("--generative-tasks", default="offline_arithmetic,offline_triviaqa")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from harness.plan import Plan

    plan_path = Path(args.store) / args.experiment / "plan.json"
    if not plan_path.is_file():
        sys.exit(f"{plan_path} is missing: run `harness run recipes/{args.experiment}.yaml` first")
    plan = Plan.load(plan_path)
    train = plan.dir(plan.by_id(f"train/{args.arm}/seed1"))
    hf = plan.dir(plan.by_id(f"export/{args.arm}/seed1")) / "hf"
    suite = plan.dir(plan.by_id("suite")) / "suite" / "tasks"
    if not (suite / "arithmetic.yaml").is_file():
        sys.exit(f"{suite} predates the generative tasks: run the experiment again")
    kinds = {"mc": ("multiple choice", args.mc_tasks), "generative": ("generative", args.generative_tasks)}
    kinds = dict(kinds[k] for k in args.kinds.split(","))
    env = {**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    for kind, tasks in kinds.items():
        best, load = {}, {}
        for _ in range(args.repeat):
            for name, model, margs in (("hf backend on the export", "hf", f"pretrained={hf},dtype=float32"),
                                       ("megatron_harness on the checkpoint", "megatron_harness",
                                        f"train_dir={train}")):
                res = subprocess.run([sys.executable, "-c", RUN, str(suite), model, margs, tasks, str(args.limit)],
                                     capture_output=True, text=True, env=env, cwd=ROOT)
                if res.returncode != 0:
                    sys.exit(res.stderr[-3000:])
                r = json.loads(res.stdout.strip().splitlines()[-1])
                best[name] = max(best.get(name, 0.0), r["items"] / r["seconds"])
                load[name] = min(load.get(name, 1e9), r["load_seconds"])
        print(f"{kind} ({tasks}, {args.limit} items each)")
        for k, v in best.items():
            print(f"  {k:<36} {v:8.1f} items/s  (model loaded in {load[k]:.1f} s, not counted)")
        ratio = best["megatron_harness on the checkpoint"] / best["hf backend on the export"]
        print(f"  ratio megatron_harness / hf                {ratio:.2f}  (target >= 1.0)")


if __name__ == "__main__":
    main()
