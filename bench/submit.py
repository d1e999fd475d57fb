"""Submission benchmark: `harness submit` of a 5 arms x 3 seeds recipe to a real Slurm cluster on this machine,
timed until every job is queued (held, so nothing runs), against the reference: the same rendered scripts
submitted by a bare `sbatch` loop in the same run. The difference is the harness's own overhead (interpreter
start, recipe, plan with 60+ stages, rendering, the ledger), also given per job and per stage.

    python bench/submit.py [--repeat 3]

Target: every job queued in under 5 s. Starts its own cluster (slurm/local-cluster/start.sh) in a temporary
folder on free ports and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness.executors.local_cluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
ARMS, SEEDS = 5, 3


def recipe(tmp: Path) -> Path:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "quiet", "seven"]
    for name in ("web", "qa"):
        with open(tmp / f"{name}.jsonl", "w") as f:
            for _ in range(400):
                f.write(json.dumps({"text": " ".join(rng.choices(words, k=120))}) + "\n")
    shares = [0.0, 0.05, 0.1, 0.2, 0.3][:ARMS]
    r = {"experiment": "bench", "profile": "local-cluster", "store": str(tmp / "runs"),
         "corpora": {"web": {"paths": [str(tmp / "web.jsonl")]}, "qa": {"paths": [str(tmp / "qa.jsonl")]}},
         "tokenizer": {"kind": "bpe", "vocab_size": 600}, "data": {"tokens": 40_000, "seq_length": 64},
         "arms": [{"name": f"qa{int(s * 100):02d}", "mix": {"web": 1 - s, "qa": s} if s else {"web": 1.0}}
                  for s in shares],
         "model": "tiny", "seeds": list(range(1, SEEDS + 1)), "report": {"baseline": "qa00"},
         "decontamination": {"corpus_report": False}}
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    # the cluster's state in /tmp itself: its unix sockets' paths must stay short (start.sh), whatever TMPDIR is
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory(prefix="slurm-", dir="/tmp") as state:
        tmp = Path(d)
        cluster = LocalCluster(Path(state) / "cluster").start()
        conf, slurm_env = cluster.conf, cluster.env
        try:
            path = recipe(tmp)
            harness_s, bare_s, jobs, stages = [], [], 0, 0
            for _ in range(args.repeat):
                runs = tmp / "runs"
                subprocess.run(["rm", "-rf", str(runs)], check=True)
                t0 = time.perf_counter()
                res = subprocess.run([sys.executable, "-m", "harness", "submit", str(path), f"profile.slurm.conf={conf}",
                                      "--hold"], cwd=ROOT, capture_output=True, text=True)
                harness_s.append(time.perf_counter() - t0)
                if res.returncode != 0:
                    raise SystemExit(res.stderr)
                ledger = json.loads((runs / "bench" / "slurm" / "jobs.json").read_text())["jobs"]
                jobs, stages = len(ledger), sum(len(j["stages"]) for j in ledger)
                scripts = [j["script"] for j in ledger]
                t0 = time.perf_counter()
                for s in scripts:  # the reference: the same scripts, queued by sbatch alone
                    subprocess.run(["sbatch", "--parsable", "--hold", s], env=slurm_env, check=True,
                                   capture_output=True)
                bare_s.append(time.perf_counter() - t0)
                queued = subprocess.run(["squeue", "-h", "-o", "%A"], env=slurm_env, capture_output=True,
                                        text=True).stdout.split()
                assert len(set(queued)) >= 2 * jobs, queued
                subprocess.run(["scancel", *set(queued)], env=slurm_env, check=True)
        finally:
            cluster.stop()
    h, b = statistics.median(harness_s), statistics.median(bare_s)
    print(f"{ARMS} arms x {SEEDS} seeds: {stages} stages in {jobs} jobs (job arrays), median of {args.repeat}")
    print(f"harness submit, until every job is queued: {h:.2f} s (target < 5 s)")
    print(f"bare sbatch of the same {jobs} scripts:      {b:.2f} s")
    print(f"ratio harness / bare sbatch: {h / b:.1f}x; harness overhead {(h - b) / jobs * 1000:.0f} ms per job, "
          f"{(h - b) / stages * 1000:.0f} ms per stage")


if __name__ == "__main__":
    main()
