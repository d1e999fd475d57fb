"""`make quickstart` itself, at a short size: the README's first command on recipes/quickstart.yaml, every arm and
stage of it (seeds, generation with the recipe's own local generator, the controls, training, export, evaluation,
report), with only its sizes overridden (one seed, fewer seeds and passages for the generators, a smaller token
budget and evaluation) through the Makefile's QUICKSTART_SET, into a store of the test's own."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.generation import models
from harness.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["seeds=[1]", "data.tokens=16384", "data.seq_length=128", "synthetic.seedqa.per_task_cap=20",
         "synthetic.taskqa.per_task_cap=2", "synthetic.unseeded.passages=3", "eval.limit=10"]
pytestmark = pytest.mark.skipif(not (models.MODELS / "smollm2-135m-instruct").is_dir(),
                                reason="run `harness assets` (make setup) first")


def test_make_quickstart_runs_end_to_end_and_reruns_nothing(tmp_path):
    store = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    res = subprocess.run(["make", "-s", "quickstart", f"QUICKSTART_STORE={store}", f"QUICKSTART_SET={' '.join(SHORT)}"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    plan = Plan.load(store / "quickstart" / "plan.json")
    ran = re.search(r"(\d+) ran, 0 cached, 0 failed, 0 skipped", out)
    assert ran and int(ran.group(1)) == len(plan.stages), out[-3000:]
    arms = ["baseline", "seedqa_10", "unseeded_2", "taskqa_2"]
    assert all(f"done eval/{a}/seed1" in out for a in arms)
    # the headline names every arm, then the report's path, then `cat` prints the report with its controls
    head = out[ran.end():]
    assert all(a in head for a in arms) and f"report: {store}/quickstart/report/report.md" in head
    report = (store / "quickstart" / "report" / "report.md").read_text()
    assert report.strip() in out
    for section in ("against `baseline`", "against `unseeded_2`", "against `seedqa_10`",
                    "### synthetic sets: what each check kept", "### contamination"):
        assert section in report, section
    # library noise stays in the stages' logs
    assert "Apex" not in out and "wandb:" not in out and "Traceback" not in out

    # the generated sets are made by the recipe's generator, not empty, and trained on
    def result(sid):
        s = plan.by_id(sid)
        return plan.store.manifest(s.kind, s.digest)["result"]

    for name in ("taskqa", "unseeded"):
        g, f = result(f"generate/{name}"), result(f"filter/{name}")
        assert g["parsed"] > 0 and f["kept"] > 0, (name, g, f)
    spec = json.loads((plan.dir(plan.by_id("train/taskqa_2/seed1")) / "train_spec.json").read_text())
    assert {s["name"] for s in spec["blend"]["sources"]} == {"sotu", "taskqa"}

    again = subprocess.run([sys.executable, "-m", "harness", "run", "recipes/quickstart.yaml", "--store",
                            str(store), *SHORT], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to run" in again.stdout and "taskqa_2" in again.stdout, again.stdout
