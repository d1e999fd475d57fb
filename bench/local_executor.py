"""Local executor benchmark: the warm worker (`harness run`: one process runs every stage, a one-process training
in it too) against the reference a user would otherwise have, one fresh process per stage (`harness run-stage`,
what a Slurm job runs, and what `harness run` did before), on the same small ablation in the same run.

    python bench/local_executor.py [--arms 2] [--seeds 2] [--tokens 60000] [--tasks offline_arc_easy offline_piqa]
                                   [--limit 50]

The data stages (tokenizer, suite, tokenize, blend) are built once into a shared store and copied for each side;
then each side runs the arms' train, export and eval stages (tiny model, SOTU corpus, two offline-suite tasks).
Prints both wall times, the ratio reference / warm (higher is better) and checks that both give the same losses and
scores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.plan import Plan  # noqa: E402


def recipe(tmp: Path, arms: int, seeds: int, tokens: int, tasks: list[str], limit: int) -> Path:
    shares = [round(1.0 - 0.1 * i, 2) for i in range(arms)]
    docs = (ROOT / ".cache" / "assets" / "sotu.jsonl").read_text().splitlines()
    (tmp / "early.jsonl").write_text("\n".join(docs[:150]) + "\n")  # two sources, so that arms can differ in shares
    (tmp / "late.jsonl").write_text("\n".join(docs[150:]) + "\n")
    r = {"experiment": "bench_local", "profile": "local", "store": str(tmp / "shared"),
         "corpora": {"sotu": {"paths": [str(tmp / "early.jsonl")]}, "sotu2": {"paths": [str(tmp / "late.jsonl")]}},
         "tokenizer": {"kind": "bpe", "vocab_size": 8192, "train_on": ["sotu"]},
         "data": {"tokens": tokens, "seq_length": 256},
         "arms": [{"name": f"a{i}", "mix": {"sotu": s, **({"sotu2": round(1 - s, 2)} if s < 1 else {})}}
                  for i, s in enumerate(shares)],
         "model": "tiny", "seeds": list(range(1, seeds + 1)),
         "train": {"micro_batch_size": 8, "global_batch_size": 16, "eval_interval": 1000, "save_interval": 1000},
         "eval": {"suite": "offline", "tasks": tasks, "limit": limit},
         "report": {"baseline": "a0"}, "wandb": {"mode": "offline"},
         "decontamination": {"corpus_report": False}}
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    return path


def harness(*args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    if check and res.returncode != 0:
        raise SystemExit(f"harness {' '.join(map(str, args))} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return res


def outcome(store: Path) -> dict:
    plan = Plan.load(store / "bench_local" / "plan.json")
    out = {}
    for s in plan.stages:
        if s.kind == "train":
            out[s.id] = json.loads((plan.dir(s) / "result.json").read_text())["loss"]
        elif s.kind == "eval":
            out[s.id] = plan.store.manifest("eval", s.digest)["result"]["tasks"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arms", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=60_000)
    ap.add_argument("--tasks", nargs="+", default=["offline_arc_easy", "offline_piqa"])
    ap.add_argument("--limit", type=int, default=50, help="evaluation documents per task")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-local-") as t:
        tmp = Path(t)
        path = recipe(tmp, a.arms, a.seeds, a.tokens, a.tasks, a.limit)
        harness("run", path, "--only", "blend", "--only", "suite")
        plan = Plan.load(tmp / "shared" / "bench_local" / "plan.json")
        todo = [s for s in plan.stages if s.kind in ("train", "export", "eval")]
        times = {}
        for side in ("reference", "warm"):
            store = tmp / side
            shutil.copytree(tmp / "shared", store, symlinks=True)
            t0 = time.perf_counter()
            if side == "warm":
                harness("run", path, "--store", store)
            else:  # the plan as `harness run` saves it (all its data stages cached), then a process per stage
                harness("run", path, "--store", store, "--only", "blend")
                mine = store / "bench_local" / "plan.json"
                for s in todo:
                    harness("run-stage", "--plan", mine, "--stage", s.id)
            times[side] = time.perf_counter() - t0
        same = outcome(tmp / "reference") == outcome(tmp / "warm")
        n = len(todo)
        print(f"{n} stages (train, export, eval of {a.arms} arms x {a.seeds} seeds, {a.tokens:,} tokens each)")
        print(f"reference (a process per stage): {times['reference']:.1f} s")
        print(f"warm worker (harness run):       {times['warm']:.1f} s (report included)")
        print(f"ratio reference / warm: {times['reference'] / times['warm']:.2f}x; same losses and scores: {same}")
        if not same:
            raise SystemExit("the two sides disagree")


if __name__ == "__main__":
    main()
