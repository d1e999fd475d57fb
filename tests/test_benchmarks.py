"""Every benchmark under bench/ runs once at its smallest size, so that none can rot between `make bench` runs:
it must finish, print its ratio lines, and pass its own identity checks (the tokenization benchmark exits non-zero
when its outputs differ). The figures printed here mean nothing: the sizes are too small and the suite shares the
cores. The evaluation benchmark needs trained checkpoints: it runs in test_end_to_end on the shared ablation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.generation import models

ROOT = Path(__file__).resolve().parent.parent
MODEL = models.MODELS / "smollm2-135m-instruct"
SOTU = ROOT / ".cache" / "assets" / "sotu.jsonl"

# script -> (its smallest arguments, what it needs here), the longest first (see conftest.LONGEST_FIRST)
SMALLEST = {
    "local_executor.py": (["--arms", "1", "--seeds", "1", "--tokens", "16384", "--tasks", "offline_arc_easy",
                           "--limit", "10"], SOTU),
    "train.py": (["--smallest"], SOTU),
    "local_backends.py": (["--per-task", "1", "--max-tokens", "16", "--batch", "9", "--repeat", "1"], MODEL),
    "generation_yield.py": (["--per-task", "1", "--max-tokens", "16", "--batch", "9"], MODEL),
    "generate.py": (["--requests", "4", "--concurrency", "2", "--max-tokens", "8", "--prompt-words", "20",
                     "--repeat", "1"], MODEL),
    "decontam.py": (["--items", "3000", "--words", "30000", "--edited", "60"], SOTU),
    "task_loading.py": (["--tasks", "offline_arc_easy", "--repeat", "1"], SOTU),
    "tokenization.py": (["--smallest"], SOTU),
    "submit.py": (["--repeat", "1"], None),
    "paper_scale.py": (["--smallest"], None),
}
ELSEWHERE = {
    "eval.py": "test_end_to_end.py::test_eval_benchmark_runs (needs trained checkpoints: the shared ablation's)",
    "gpu_smoke.py": "the GPU check (bench/gpu_smoke.sh); its CPU mode is a 3.5-minute toy run of the same script",
}
# modules the benchmarks import, not benchmarks themselves: they run inside the benchmarks above
HELPERS = {"quickstart_suite.py"}


def test_every_benchmark_is_smoke_run_somewhere():
    scripts = {p.name for p in (ROOT / "bench").glob("*.py")} - HELPERS
    assert scripts == set(SMALLEST) | set(ELSEWHERE), scripts ^ (set(SMALLEST) | set(ELSEWHERE))


@pytest.mark.parametrize("script", list(SMALLEST))
def test_benchmark_runs_at_its_smallest_size(script, tmp_path):
    args, needs = SMALLEST[script]
    if needs is not None and not needs.exists():
        pytest.skip(f"{needs} is missing: run `make setup` first")
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "ratio" in res.stdout, res.stdout[-4000:]
