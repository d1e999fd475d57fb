"""The offline suite as the quickstart builds it, for the benchmarks that read its tasks or items: the suite stage of
recipes/quickstart.yaml, run in the quickstart's own store (runs/), or found there published. Its data come from
the machine's build cache after the first build (~40 s from the wheels on 2 cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def suite_dir() -> Path:
    """The published suite stage's folder: data/<task>/<split>.jsonl and tasks/ (lm-eval YAMLs)."""
    res = subprocess.run([sys.executable, "-m", "harness", "run", str(ROOT / "recipes" / "quickstart.yaml"), "--only",
                          "suite"], capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"the quickstart's suite stage failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    from harness.plan import Plan

    plan = Plan.load(ROOT / "runs" / "quickstart" / "plan.json")
    return plan.dir(plan.by_id("suite")) / "suite"
