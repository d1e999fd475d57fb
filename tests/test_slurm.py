"""The Slurm executor against a real Slurm cluster started on this machine (slurm/local-cluster/start.sh): the tiny
recipe end to end with training across both nodes (srun, gloo), failure and resubmit, and a training job
interrupted twice - by its own time-limit signal (requeue by the job) and by preemption (requeue by Slurm) - that
resumes and ends with the losses of an uninterrupted run."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import base_recipe, write_recipe
from harness.executors.local_cluster import LocalCluster
from harness.plan import Plan

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"micro_batch_size": 4, "global_batch_size": 8, "lr": 3e-3, "min_lr": 3e-4, "eval_interval": 20,
         "eval_samples": 8, "save_interval": 1000}


class Cluster(LocalCluster):
    def sacct(self, job_ids: list[str]) -> dict[str, str]:
        out = self.cmd("sacct", "-P", "-n", "-X", "--format=JobID,State", "-j", ",".join(job_ids))
        return dict(line.split("|")[:2] for line in out.splitlines())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("slurm-local")) as c:
        yield c


def harness(*args, check=True, timeout=900) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                         cwd=REPO, timeout=timeout)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def ledger(store: Path, experiment: str = "toy") -> list[dict]:
    return json.loads((store / experiment / "slurm" / "jobs.json").read_text())["jobs"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory, cluster):
    """The tiny recipe on the local cluster: 2 arms x 1 seed, evaluated; training spans both nodes."""
    tmp = tmp_path_factory.mktemp("slurm-e2e")
    r = base_recipe(tmp, profile="local-cluster", train=TRAIN,
                    eval={"suite": "offline", "tasks": ["offline_arc_easy"], "limit": 20})
    r["data"].update(tokens=12_800, seq_length=128)
    r["tokenizer"].update(vocab_size=2000, train_on=["web"])
    path = write_recipe(tmp / "r.yaml", r)
    conf = f"profile.slurm.conf={cluster.conf}"
    t0 = time.perf_counter()
    sub = harness("submit", path, conf, "profile.slurm.resources.train.nodes=2")
    queued = time.perf_counter() - t0
    wait = harness("status", path, "--wait", 600, check=False)
    return tmp, path, conf, sub.stdout, queued, wait


def test_tiny_recipe_end_to_end_on_the_cluster(toy, cluster):
    tmp, path, conf, submitted, queued, wait = toy
    assert wait.returncode == 0, wait.stdout[-4000:]
    store = tmp / "runs"
    plan = Plan.load(store / "toy" / "plan.json")
    assert all(plan.is_cached(s) for s in plan.stages)
    jobs = ledger(store)
    # one job per group: arms share arrays, train after blend task by task
    by_kind = {j["kind"]: j for j in jobs}
    assert by_kind["train"]["array"] and len(by_kind["train"]["stages"]) == 2
    assert f"aftercorr:{by_kind['blend']['job_id']}" in by_kind["train"]["dependency"]
    assert f"aftercorr:{by_kind['train']['job_id']}" in by_kind["export"]["dependency"]
    tasks = [f"{j['job_id']}_{i}" if j["array"] else j["job_id"] for j in jobs for i in range(len(j["stages"]))]
    states = cluster.sacct([j["job_id"] for j in jobs])
    assert set(tasks) <= set(states) and {states[t] for t in tasks} == {"COMPLETED"}, states
    # the scripts are kept, readable and resubmittable by hand
    script = Path(by_kind["train"]["script"]).read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=B:USR1@60" in script and "#SBATCH --nodes=2" in script
    assert "run-stage --plan" in script and "train/base/seed1" in script
    # training spanned both nodes through srun
    for arm in ("base", "mixed"):
        result = json.loads((plan.dir(plan.by_id(f"train/{arm}/seed1")) / "manifest.json").read_text())["result"]
        assert result["world_size"] == 2 and result["nodes"] == ["node1", "node2"]
    rep = harness("report", path)
    assert (store / "toy" / "report" / "report.md").is_file() and "mixed" in rep.stdout
    # nothing left to do: a second submit submits nothing; logs of a stage are at hand
    again = harness("submit", path, conf)
    assert "submitted 0 job(s)" in again.stdout
    logs = harness("logs", "toy", "train/mixed/seed1", "--store", store)
    assert "exited with status 0" in logs.stdout


def test_failure_blocks_dependents_and_resubmit_finishes_the_rest(toy, cluster, tmp_path):
    """A corpus file gone at run time: its tokenization fails, what needs it never starts, status says why; once
    the file is back, resubmit runs only what is missing."""
    tmp, _, conf, *_ = toy
    r = base_recipe(tmp, profile="local-cluster", train=TRAIN, experiment="fail")
    r["data"].update(tokens=12_800, seq_length=128)
    r["tokenizer"].update(vocab_size=2000, train_on=["web"])
    extra = tmp / "corpora" / "extra.jsonl"
    shutil.copyfile(tmp / "corpora" / "qa.jsonl", extra)
    with open(extra, "a") as f:
        f.write(json.dumps({"text": "A line that makes this corpus new to the store."}) + "\n")
    r["corpora"]["extra"] = {"paths": [str(extra)]}
    r["arms"].append({"name": "extra", "mix": {"web": 0.8, "extra": 0.2}})
    path = write_recipe(tmp / "fail.yaml", r)
    store = tmp / "runs"
    published_before = {p: p.stat().st_mtime for p in (store / "_stages").glob("*/*/manifest.json")}

    sub = harness("submit", path, conf, "--only", "blend", "--hold")
    ids = [j["job_id"] for j in ledger(store, "fail")]
    moved = tmp_path / "extra.jsonl"
    shutil.move(extra, moved)  # the scratch file system lost it after submission
    cluster.cmd("scontrol", "release", *ids)
    st = harness("status", "fail", "--store", store, "--wait", 300, check=False)
    assert st.returncode == 1
    assert "tokenize/extra" in st.stdout and "FAILED" in st.stdout
    assert "DependencyNeverSatisfied" in st.stdout  # the blends wait for an input that failed
    assert "extra.jsonl" in st.stdout, "the log tail names the missing file"
    plan = Plan.load(store / "fail" / "plan.json")
    assert not plan.is_cached(plan.by_id("blend/extra/seed1"))

    shutil.move(moved, extra)
    res = harness("resubmit", "fail", "--store", store, "--only", "blend")
    assert "tokenize/extra" in res.stdout and "fail.tokenizer" not in res.stdout
    st = harness("status", "fail", "--store", store, "--wait", 300, check=False)
    assert st.returncode == 0, st.stdout[-3000:]
    assert all(plan.is_cached(plan.by_id(s)) for s in ("blend/base/seed1", "blend/mixed/seed1", "blend/extra/seed1"))
    for p, mtime in published_before.items():  # finished work was not redone
        assert p.stat().st_mtime == mtime, p
    assert sub.returncode == 0


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _task_of(store: Path, stage: str, experiment: str = "toy") -> str:
    job = [j for j in ledger(store, experiment) if stage in j["stages"]][-1]
    return f"{job['job_id']}_{job['stages'].index(stage)}" if job["array"] else job["job_id"]


def test_interrupted_training_requeues_and_resumes_to_the_same_losses(toy, cluster):
    """A training job of two tasks on two nodes, interrupted twice: by the time-limit signal (the job saves and
    requeues itself) and by a preempting job in the `urgent` partition (Slurm requeues it); the resumed run's losses
    equal the uninterrupted run's."""
    tmp, path, conf, *_ = toy
    store = tmp / "runs"
    stage = "train/base/seed1"
    # 40 steps on two tasks (one per node, srun --kill-on-bad-exit): a rank that stopped with a non-zero status
    # would make srun kill the other mid-exit, and the job would fail instead of requeueing
    longer = ["experiment=long", "data.tokens=40960", "train.save_interval=4", "train.log_interval=1",
              "profile.slurm.resources.train.nodes=2"]
    harness("submit", path, conf, *longer, "--only", stage)
    assert harness("status", "long", "--store", store, "--wait", 600, check=False).returncode == 0
    plan = Plan.load(store / "long" / "plan.json")
    spec = plan.by_id(stage)
    reference = _metrics(plan.dir(spec) / "metrics.jsonl")
    assert len(reference) == 40
    shutil.rmtree(plan.dir(spec))  # run it again, interrupted this time

    harness("submit", path, conf, *longer, "--only", stage)
    task = _task_of(store, stage, "long")
    partial = plan.store.partial_dir(spec.kind, spec.digest) / "metrics.jsonl"

    def wait_for_step(n: int, after: int = 0) -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            m = _metrics(partial)
            if len(m) > after and m[-1]["step"] >= n:
                return
            time.sleep(0.2)
        logs = harness("logs", "long", stage, "--store", store, check=False)
        raise AssertionError(f"training did not reach step {n}: {logs.stdout[-2000:]}")

    wait_for_step(8)
    cluster.cmd("scancel", "--batch", "--signal=USR1", task)  # what --signal=B:USR1@N sends before the limit
    wait_for_step(20, after=0)
    # a job of the higher-priority partition that needs every CPU of both nodes preempts the training
    urgent = cluster.cmd("sbatch", "--parsable", "-p", "urgent", "-N2", "--ntasks-per-node=1", "-c", "4",
                         "--mem=100M", "-o", "/dev/null", "--wrap", "sleep 2").strip()
    st = harness("status", "long", "--store", store, "--wait", 600, check=False)
    assert st.returncode == 0, st.stdout[-3000:]
    assert cluster.sacct([urgent])[urgent] == "COMPLETED"
    rows = st.stdout
    log = harness("logs", "long", stage, "--store", store).stdout
    assert log.count("restart 1)") >= 1 and log.count("restart 2)") >= 1, log[-3000:]
    assert "interrupted: saved step" in (plan.store.stage_dir(spec.kind, spec.digest) / "train.log").read_text()
    resumed = _metrics(plan.dir(spec) / "metrics.jsonl")
    assert [m["step"] for m in resumed] == list(range(1, 41)), rows
    assert json.loads((plan.dir(spec) / "result.json").read_text())["world_size"] == 2
    for a, b in zip(reference, resumed):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (a, b)


def test_with_max_requeues_0_an_interrupted_training_is_not_requeued(toy, cluster):
    """profile.slurm.max_requeues 0: a training job that saved on the time-limit signal stops there - its job
    fails with the stage's status 75, its log says why it was not requeued, and nothing is published."""
    from harness.executors.slurm import Slurm

    tmp, path, conf, *_ = toy
    store = tmp / "runs"
    stage = "train/base/seed1"
    # the toy's published tokenizer and blend, one process, batches of one sequence: 100 short steps, so that
    # training is surely still running when the signal comes
    harness("submit", path, conf, "experiment=norequeue", "profile.slurm.max_requeues=0",
            "train.micro_batch_size=1", "train.global_batch_size=1", "--only", stage)
    jobs = ledger(store, "norequeue")
    assert [j["stages"] for j in jobs] == [[stage]], jobs
    task = jobs[0]["job_id"]
    try:
        assert "(max_requeues 0)" in Path(jobs[0]["script"]).read_text()
        plan = Plan.load(store / "norequeue" / "plan.json")
        spec = plan.by_id(stage)
        partial = plan.store.partial_dir(spec.kind, spec.digest)
        deadline = time.time() + 300
        while not _metrics(partial / "metrics.jsonl") and time.time() < deadline:
            time.sleep(0.2)
        assert _metrics(partial / "metrics.jsonl"), "training did not start"
        cluster.cmd("scancel", "--batch", "--signal=USR1", task)  # what --signal=B:USR1@N sends before the limit
        st = harness("status", "norequeue", "--store", store, "--wait", 300, check=False)
        assert st.returncode == 1, st.stdout[-3000:]
        job = Slurm(str(cluster.conf)).jobs([task])[task]
        assert (job["state"], job["restarts"], job["exit_code"]) == ("FAILED", 0, "75:0"), job
        assert cluster.sacct([task])[task] == "FAILED"
        log = Path(jobs[0]["log"].replace("%j", task)).read_text()
        assert "not requeued: 0 restarts (max_requeues 0)" in log and "exited with status 75" in log, log[-3000:]
        assert "restart 1)" not in log
        saved = _metrics(partial / "metrics.jsonl")[-1]["step"]
        assert f"interrupted: saved step {saved}" in (partial / "train.log").read_text() and saved < 100
        assert not plan.is_cached(spec) and not plan.dir(spec).exists()
    finally:
        cluster.cmd("scancel", task)


def test_submit_skips_queued_stages_and_cancel_cancels_them(cluster, tmp_path):
    """Held jobs: a second submit submits nothing (their stages are queued already) and says which stages it left
    alone; `harness cancel` cancels every one of them, and nothing is published."""
    from harness import recipe as rcp
    from harness.executors import slurm

    r = base_recipe(tmp_path, profile="local-cluster", train=TRAIN, experiment="held")
    r["data"].update(tokens=12_800, seq_length=128)
    r["tokenizer"].update(vocab_size=2000, train_on=["web"])
    path = write_recipe(tmp_path / "held.yaml", r)
    conf = f"profile.slurm.conf={cluster.conf}"
    store = tmp_path / "runs"
    harness("submit", path, conf, "--only", "blend", "--hold")
    jobs = ledger(store, "held")
    ids = [j["job_id"] for j in jobs]
    try:
        stages = sorted(s for j in jobs for s in j["stages"])
        assert stages == ["blend/base/seed1", "blend/mixed/seed1", "tokenize/qa", "tokenize/web", "tokenizer"]
        again = harness("submit", path, conf, "--only", "blend")  # not held: anything it submitted would run
        assert "submitted 0 job(s) for 0 stage(s); 0 published, 5 already queued or running" in again.stdout, \
            again.stdout
        assert ledger(store, "held") == jobs
        plan = Plan.load(store / "held" / "plan.json")
        saved = rcp.load(store / "held" / "recipe.yaml", check_files=False)
        res = slurm.submit(plan, saved.profile, ["blend"], echo=lambda *a, **k: None)  # what the CLI counted
        assert res.groups == [] and res.skipped_active == stages and res.cancelled == []
        assert ledger(store, "held") == jobs

        cancelled = harness("cancel", "held", "--store", store).stdout
        tasks = [f"{j['job_id']}_{i}" if j["array"] else j["job_id"] for j in jobs for i in range(len(j["stages"]))]
        assert f"cancelled {len(tasks)} job(s): {', '.join(tasks)}" in cancelled, cancelled
        st = harness("status", "held", "--store", store).stdout
        assert "5 CANCELLED" in st, st
        states = cluster.sacct(ids)
        assert states and all(v.startswith("CANCELLED") for v in states.values()), states
        assert {k.split("_")[0] for k in states} == set(ids), states
        assert not any(plan.is_cached(plan.by_id(s)) for s in stages)
        assert not list(store.glob("_stages/*/*/manifest.json"))
        assert "0 job(s)" in harness("cancel", "held", "--store", store).stdout  # nothing left to cancel
    finally:
        cluster.cmd("scancel", *{j["job_id"] for j in ledger(store, "held")})


def test_grouping_and_dependencies_without_a_cluster(tmp_path):
    """Arrays per kind and depth; aftercorr where task i needs task i; afterok on the precise tasks otherwise; a
    job recorded for an earlier version of a stage (another digest) is not that stage's job."""
    from harness import recipe as rcp
    from harness.executors import slurm

    from harness.plan import build
    from harness.store import Store

    rec = rcp.load(write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path, seeds=[1, 2])))
    plan = build(rec, Store(rec.store))
    groups = slurm.group(plan, list(plan.stages), rcp.ProfileConfig(executor="slurm"))
    of_stage = {}
    deps = {}
    for n, g in enumerate(groups):
        g.job_id = str(100 + n)
        deps[g.kind] = slurm.dependency(g, of_stage, {})
        of_stage.update({s.id: g for s in g.stages})
    by_kind = {g.kind: g for g in groups}
    assert len(by_kind["train"].stages) == 4 and by_kind["train"].array
    assert f"aftercorr:{by_kind['blend'].job_id}" in deps["train"]
    tok = by_kind["tokenize"]
    assert f"afterok:{tok.job_id}" in deps["blend"].split(","), "every task of an array: the array's job id"
    web = tok.task("tokenize/web")
    base_only = slurm.Group("blend", 9, [s for s in by_kind["blend"].stages if "/base/" in s.id], "200")
    assert f"afterok:{web}" in slurm.dependency(base_only, of_stage, {}).split(","), "only the task it needs"
    assert deps["tokenizer"] == ""
    # the ledger: a job of another digest is history, not the stage's job
    ledger = slurm.Ledger(plan)
    stage = plan.by_id("train/base/seed1")
    ledger.add({"job_id": "7", "name": "toy.train", "kind": "train", "stages": [stage.id], "digests": ["old"],
                "array": False, "script": "", "dependency": "", "log": "x-%j.out", "submitted": 0})
    assert stage.id not in ledger.current(plan) and stage.id in ledger.current()
    ledger.add({"job_id": "8", "name": "toy.train", "kind": "train", "stages": [stage.id], "digests": [stage.digest],
                "array": False, "script": "", "dependency": "", "log": "x-%j.out", "submitted": 0})
    assert ledger.current(plan)[stage.id]["task"] == "8" and ledger.current(plan)[stage.id]["log"] == "x-8.out"


def test_a_state_directory_too_deep_for_unix_sockets_is_refused_by_name(tmp_path):
    """munged's socket and slurmd's step sockets live in the cluster's state directory, and a unix socket's path
    has at most 107 bytes: under pytest-xdist's deeper temporary folders munged refused its socket, and start.sh
    (set -e) ended without a word. It now refuses such a directory up front, naming it."""
    from harness.executors.local_cluster import SCRIPTS

    deep = tmp_path / ("d" * max(1, 71 - len(str(tmp_path)) - 1))
    assert len(str(deep)) > 70
    try:
        res = subprocess.run([str(SCRIPTS / "start.sh"), str(deep)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 1 and str(deep) in res.stderr and "107 bytes" in res.stderr, res.stderr
        assert not (deep / "run").exists(), "nothing started"
    finally:
        subprocess.run([str(SCRIPTS / "stop.sh"), str(deep), "--purge"], capture_output=True, timeout=120)
