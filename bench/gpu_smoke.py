"""The GPU path, for real, in one short run (bench/gpu_smoke.sh runs it on a GPU machine; `--cpu` runs the same
steps here at toy size, to check the script itself).

Through the harness's own CLI and stages, as a cluster job would run them: a synthetic corpus, BPE, tokenization,
the blend, then training of the 125m preset in bf16 over NCCL (world size 1; megatron.core, torch's fused
attention or Transformer Engine where installed) twice - once straight through, once stopped by SIGUSR1 after its
first checkpoints and resumed - comparing the losses step by step; tokens/s and MFU from the metrics; the export to
a transformers folder; lm-eval's `hf` backend on that folder, on the GPU, over a small generated multiple-choice
task. Prints one JSON summary (and writes it to OUT/summary.json).

    python bench/gpu_smoke.py --out DIR [--cpu] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def harness(*args, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                         cwd=ROOT)
    if check and res.returncode != 0:
        raise SystemExit(f"harness {' '.join(map(str, args))} failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return res


def corpus(path: Path, n_docs: int, seed: int = 0) -> None:
    """Pseudo-prose with a Zipf-like vocabulary: enough structure for the loss to fall."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ter", "on", "ship", "ward", "ness", "ri", "ven", "cal", "dor", "pe", "us", "ta"]
    vocab = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    with open(path, "w") as f:
        for _ in range(n_docs):
            words = rng.choices(vocab, weights, k=rng.randint(100, 400))
            f.write(json.dumps({"text": " ".join(words).capitalize() + "."}) + "\n")


def recipe(work: Path, args) -> Path:
    seq, gbs = (128, 8) if args.cpu else (1024, 16)
    r = {
        "experiment": "gpu_smoke", "profile": "local", "store": str(work / "runs"),
        "corpora": {"web": {"paths": [str(work / "web.jsonl")]}},
        "tokenizer": {"kind": "bpe", "vocab_size": 8192, "train_bytes": 2_000_000},
        "data": {"tokens": args.steps * gbs * seq, "seq_length": seq, "max_epochs": 50},
        "arms": [{"name": "base", "mix": {"web": 1.0}}], "seeds": [1],
        "model": "tiny" if args.cpu else "125m",
        "train": {"micro_batch_size": 8 if args.cpu else 16, "global_batch_size": gbs, "lr": 6e-4, "min_lr": 6e-5,
                  "precision": "fp32" if args.cpu else "bf16", "save_interval": 10, "keep_last": 10,
                  "eval_interval": 20, "eval_samples": 16, "log_interval": 5},
        "eval": {"suite": "offline", "tasks": ["offline_arc_easy"]},
        "report": {"baseline": "base"}, "decontamination": {"corpus_report": False},
    }
    path = work / "smoke.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    return path


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_twice(rpath: Path, work: Path, args) -> dict:
    """Uninterrupted, then interrupted + resumed in a second store; losses compared step by step."""
    t0 = time.perf_counter()
    harness("run", rpath, "--only", "export")
    seconds = time.perf_counter() - t0
    from harness.plan import Plan

    plan = Plan.load(work / "runs" / "gpu_smoke" / "plan.json")
    spec = plan.by_id("train/base/seed1")
    ref = metrics(plan.dir(spec) / "metrics.jsonl")
    result = json.loads((plan.dir(spec) / "result.json").read_text())
    export = plan.dir(plan.by_id("export/base/seed1")) / "hf"

    other = ["store=" + str(work / "runs2")]
    harness("run", rpath, *other, "--only", "blend")
    plan2 = Plan.load(work / "runs2" / "gpu_smoke" / "plan.json")
    partial = plan2.store.partial_dir(spec.kind, spec.digest) / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run-stage", "--plan", str(plan2.path), "--stage",
                             spec.id], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and (not partial.exists() or len(partial.read_text().splitlines()) < 12):
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@N sends before a Slurm time limit
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = len(metrics(partial)) if partial.exists() else 0
    res = harness("run", rpath, *other, "--only", "train", check=False)
    resumed = metrics(plan2.dir(spec) / "metrics.jsonl") if res.returncode == 0 else []
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(ref, resumed)]
    rates = [m["tokens_per_s"] for m in ref if "tokens_per_s" in m][1:-1] or [ref[-1]["tokens_per_s"]]
    mfus = [m["mfu"] for m in ref if "mfu" in m][1:-1]
    return {"steps": len(ref), "first_loss": ref[0]["loss"], "last_loss": ref[-1]["loss"],
            "parameters": result["parameters"], "flops_per_token": result.get("flops_per_token"),
            "tokens_per_s_median": statistics.median(rates), "mfu_median": statistics.median(mfus) if mfus else None,
            "train_export_wall_s": round(seconds, 1),
            "interrupt": {"exit_status": proc.returncode, "stopped_at_step": stopped,
                          "resumed": "resumed from" in res.stderr, "resume_exit": res.returncode,
                          "steps_after_resume": len(resumed), "max_abs_loss_diff": max(diffs) if diffs else None,
                          "stderr_tail": err[-600:] if proc.returncode != 75 else ""},
            "export": str(export)}


def arithmetic_items(n: int = 64) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        choices = [str(a + b), str(wrong)]
        rng.shuffle(choices)
        rows.append({"question": f"What is {a} plus {b}?", "choices": choices, "answer": choices.index(str(a + b))})
    return rows


def lm_eval_hf(export: Path, work: Path, device: str) -> dict:
    """lm-eval's own `hf` backend on the export, on the device, over a generated 2-choice arithmetic task."""
    rows = arithmetic_items()
    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "smoke_arith.yaml").write_text(yaml.safe_dump({
        "task": "smoke_arith", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(tasks / "arith.jsonl")}}, "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}]}))
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    out = simple_evaluate(model="hf", model_args=f"pretrained={export},dtype=float32", tasks=["smoke_arith"],
                          task_manager=TaskManager(include_path=str(tasks), include_defaults=False), device=device,
                          batch_size=16)
    seconds = time.perf_counter() - t0
    return {"device": device, "acc": out["results"]["smoke_arith"]["acc,none"], "items": len(rows),
            "seconds": round(seconds, 1)}


def transformers_direct(export: Path, device: str) -> dict:
    """Without lm-eval on the machine: the export loaded by transformers on the device, each item scored by the
    log-likelihood of its choices (what lm-eval's acc does), in one batch per item."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).to(device).eval()
    t0, right = time.perf_counter(), 0
    rows = arithmetic_items()
    with torch.no_grad():
        for r in rows:
            ctx = tok(f"Question: {r['question']}\nAnswer:")["input_ids"]
            scores = []
            for c in r["choices"]:
                cont = tok(" " + c)["input_ids"]
                ids = torch.tensor([ctx + cont], device=device)
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
                scores.append(float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont))))
            right += scores.index(max(scores)) == r["answer"]
    return {"device": device, "acc": right / len(rows), "items": len(rows),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--cpu", action="store_true", help="toy size on a CPU: checks this script, not the GPU path")
    args = ap.parse_args()
    import torch

    work = args.out.resolve() / "work"
    work.mkdir(parents=True, exist_ok=True)
    summary: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                     "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                     "python": sys.version.split()[0]}
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no GPU visible: run with --cpu to check the script on a CPU")
    t0 = time.perf_counter()
    corpus(work / "web.jsonl", 3000 if args.cpu else 20000)
    try:
        summary["train"] = train_twice(recipe(work, args), work, args)
        export, device = Path(summary["train"]["export"]), "cpu" if args.cpu else "cuda"
        summary["transformers_on_device"] = transformers_direct(export, device)
        try:
            import lm_eval  # noqa: F401
        except ImportError as e:
            summary["lm_eval_hf"] = f"skipped: lm-eval not importable here ({e}); `prepare eval` brings it"
        else:
            summary["lm_eval_hf"] = lm_eval_hf(export, work, device)
    except SystemExit as e:
        summary["error"] = str(e)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(summary, indent=2)
    (args.out / "summary.json").write_text(text)
    print(text)
    it = summary.get("train", {}).get("interrupt", {})
    ok = ("error" not in summary and it.get("exit_status") == 75 and it.get("resumed")
          and it.get("steps_after_resume") == summary["train"]["steps"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
