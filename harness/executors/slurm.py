"""The Slurm executor: a plan's stages as sbatch jobs that run the same `python -m harness run-stage` as the local
executor.

Stages of one kind at the same depth of the DAG (the arms x seeds of train, blend, export, eval) share one job array
when they ask for the same resources. A job waits for its inputs with `--dependency`: `aftercorr` when array task i
needs exactly task i of another array (train i after blend i), otherwise `afterok` on the precise jobs or array
tasks it needs. Published stages are never submitted; stages whose job is still pending or running are not
submitted again, so `submit` twice, or `resubmit` after a failure, only adds what is missing.

Every job is recorded in <experiment>/slurm/jobs.json (written after each sbatch, so an interrupted submission
leaves a true record); scripts are kept in <experiment>/slurm/scripts/, job output in <experiment>/slurm/logs/.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from harness import recipe as rcp
from harness.plan import Plan, select
from harness.stages import StageSpec
from harness.store import write_json_atomic

TEMPLATE = Path(__file__).resolve().parents[2] / "slurm" / "stage.sbatch.j2"
DEFAULT_RESOURCES = rcp.SlurmResources(nodes=1, gpus_per_node=0, cpus_per_task=1, mem="4G", time="04:00:00")
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "SUSPENDED",
          "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
NO_VAL = "4294967294"  # scontrol's ArrayTaskId of an array whose tasks all ended before they started (cancelled)
NEVER = ("DependencyNeverSatisfied", "InvalidDependency")  # pending reasons of a job that will never start


class SlurmError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------- commands


class Slurm:
    """The Slurm commands the executor needs, run with the profile's slurm.conf."""

    def __init__(self, conf: str | None = None):
        self.env = dict(os.environ)
        if conf:
            if not Path(conf).is_file():
                raise SlurmError(f"profile.slurm.conf: no file '{conf}' (is the local cluster started? "
                                 f"slurm/local-cluster/start.sh)")
            self.env["SLURM_CONF"] = str(Path(conf).resolve())

    def run(self, *cmd: str, check: bool = True) -> str:
        if shutil.which(cmd[0]) is None:
            raise SlurmError(f"'{cmd[0]}' not found: Slurm's client commands are not installed here (for a "
                             f"cluster on this machine: slurm/local-cluster/start.sh)")
        res = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if check and res.returncode != 0:
            raise SlurmError(f"{shlex.join(cmd)} failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}")
        return res.stdout

    def sbatch(self, script: Path, dependency: str | None, hold: bool) -> str:
        cmd = ["sbatch", "--parsable"] + ([f"--dependency={dependency}"] if dependency else []) + \
              (["--hold"] if hold else []) + [str(script)]
        return self.run(*cmd).strip().split(";")[0]

    def scancel(self, ids: list[str]) -> None:
        if ids:
            self.run("scancel", *ids, check=False)

    def jobs(self, ids: list[str]) -> dict[str, dict]:
        """State of jobs and array tasks by id ("12", "12_3"): the controller's view for jobs it still holds,
        accounting (sacct) for older ones."""
        out: dict[str, dict] = {}
        for line in self.run("scontrol", "show", "job", "-o", check=False).splitlines():
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "JobId" not in f:
                continue
            rec = {"state": f.get("JobState", "?"), "reason": f.get("Reason", "None"), "elapsed": f.get("RunTime", ""),
                   "restarts": int(f.get("Restarts", 0)), "exit_code": f.get("ExitCode", ""),
                   "nodes": f.get("NodeList", "(null)")}
            if "ArrayJobId" in f:
                if f.get("ArrayTaskId") == NO_VAL:  # no task left pending: the array's own record (below)
                    out.setdefault(f["ArrayJobId"], rec)
                for task in _expand_range(f.get("ArrayTaskId", "")):
                    out[f"{f['ArrayJobId']}_{task}"] = rec
            else:
                out[f["JobId"]] = rec
        missing = [i for i in ids if i not in out]
        if missing:
            acct = self.run("sacct", "-P", "-n", "-X", "-D", "--format=JobID,State,ExitCode,Elapsed,NodeList,Reason",
                            "-j", ",".join(sorted({i.split("_")[0] for i in missing})), check=False)
            runs: dict[str, list] = defaultdict(list)
            for line in acct.splitlines():
                parts = line.split("|")
                if len(parts) >= 6:
                    runs[parts[0]].append(parts)
            for jid, recs in runs.items():
                last = recs[-1]
                out.setdefault(jid, {"state": last[1].split()[0], "reason": last[5], "elapsed": last[3],
                                     "restarts": len(recs) - 1, "exit_code": last[2], "nodes": last[4]})
        for i in ids:  # a task cancelled while pending leaves no record of its own: its array's record tells
            if i not in out and i.split("_")[0] in out:
                out[i] = out[i.split("_")[0]]
        return out


def _expand_range(spec: str) -> list[str]:
    """Array task ids from scontrol's ArrayTaskId: "3", "0-4", "0-4%2", "1,3-5"."""
    out = []
    for part in spec.split("%")[0].split(","):
        if re.fullmatch(r"\d+-\d+", part):
            a, b = map(int, part.split("-"))
            out += [str(i) for i in range(a, b + 1)]
        elif part.isdigit():
            out.append(part)
    return out


# --------------------------------------------------------------------------------------------- ledger


class Ledger:
    """<experiment>/slurm/jobs.json: every job submitted for an experiment; the newest job of a stage is its job."""

    def __init__(self, plan: Plan):
        self.dir = plan.store.experiment_dir(plan.experiment) / "slurm"
        self.path = self.dir / "jobs.json"
        self.jobs: list[dict] = json.loads(self.path.read_text())["jobs"] if self.path.is_file() else []

    def add(self, job: dict) -> None:
        self.jobs.append(job)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"jobs": self.jobs})

    def current(self, plan: Plan | None = None) -> dict[str, dict]:
        """stage id -> {task id, job, log} of its newest job (with a plan: only jobs that ran the plan's stage with
        the same digest, not a stage of the same name from an earlier version of the recipe)."""
        digests = {s.id: s.digest for s in plan.stages} if plan else None
        cur = {}
        for job in self.jobs:
            for i, stage in enumerate(job["stages"]):
                if digests is not None and digests.get(stage) != job.get("digests", [None] * len(job["stages"]))[i]:
                    continue
                task = f"{job['job_id']}_{i}" if job["array"] else job["job_id"]
                log = job["log"].replace("%A", job["job_id"]).replace("%a", str(i)).replace("%j", job["job_id"])
                cur[stage] = {"task": task, "job": job, "log": log}
        return cur


# --------------------------------------------------------------------------------------------- resources


def resources(profile: rcp.ProfileConfig, kind: str) -> rcp.SlurmResources:
    """Built-in defaults, overlaid by the profile's `default`, overlaid by the stage kind's entry."""
    merged = rcp.to_dict(DEFAULT_RESOURCES)
    for layer in (profile.slurm.resources.get("default"), profile.slurm.resources.get(kind)):
        if layer is not None:
            merged.update({k: v for k, v in rcp.to_dict(layer).items() if v is not None})
    if kind != "train":
        merged["nodes"] = 1
    return rcp.SlurmResources(**merged)


def directives(profile: rcp.ProfileConfig, kind: str, name: str, n: int, log: str, cwd: str) -> list[str]:
    r = resources(profile, kind)
    sl = profile.slurm
    d = [f"--job-name={name}", f"--output={log}", "--open-mode=append", f"--chdir={cwd}", f"--nodes={r.nodes}",
         f"--ntasks-per-node={profile.nproc_per_node if kind == 'train' else 1}", f"--cpus-per-task={r.cpus_per_task}",
         f"--mem={r.mem}", f"--time={r.time}", "--requeue"]  # preempted jobs go back to the queue, not away
    if n > 1:
        d.append(f"--array=0-{n - 1}")
    if r.gpus_per_node:
        d.append(f"--gpus-per-node={r.gpus_per_node}")
    for key, val in (("partition", r.partition), ("qos", r.qos), ("account", sl.account)):
        if val:
            d.append(f"--{key}={val}")
    if kind == "train" and sl.signal_seconds:
        d.append(f"--signal=B:USR1@{sl.signal_seconds}")  # to the batch shell, which passes it on
    d += list(sl.sbatch)
    return sorted(d)


# --------------------------------------------------------------------------------------------- grouping


@dataclass
class Group:
    kind: str
    depth: int
    stages: list[StageSpec] = field(default_factory=list)
    job_id: str = ""

    @property
    def array(self) -> bool:
        return len(self.stages) > 1

    def task(self, stage_id: str) -> str:
        i = [s.id for s in self.stages].index(stage_id)
        return f"{self.job_id}_{i}" if self.array else self.job_id


def group(plan: Plan, todo: list[StageSpec], profile: rcp.ProfileConfig) -> list[Group]:
    """Stages of one kind, at one depth, with the same resources, in one job (an array when several)."""
    ids = {s.id for s in todo}
    depth: dict[str, int] = {}
    for s in todo:  # plan order is a topological order
        depth[s.id] = 1 + max((depth[d] for d in s.deps.values() if d in ids), default=-1)
    groups: dict[tuple, Group] = {}
    for s in todo:
        key = (depth[s.id], s.kind, json.dumps(rcp.to_dict(resources(profile, s.kind)), sort_keys=True))
        groups.setdefault(key, Group(s.kind, depth[s.id])).stages.append(s)
    return sorted(groups.values(), key=lambda g: (g.depth, g.kind))


def dependency(g: Group, of_stage: dict[str, Group], active_task: dict[str, str]) -> str:
    """The --dependency of a group: aftercorr on an array whose task i is exactly what task i needs, afterok on
    the precise jobs or tasks otherwise (including still-running jobs of earlier submissions)."""
    needs: dict[str, set[str]] = defaultdict(set)  # dependency job id -> task ids needed
    per_task: dict[str, list[set[str]]] = defaultdict(lambda: [set() for _ in g.stages])
    for i, s in enumerate(g.stages):
        for dep in s.deps.values():
            if dep in of_stage:
                dg = of_stage[dep]
                needs[dg.job_id].add(dg.task(dep))
                per_task[dg.job_id][i].add(dep)
            elif dep in active_task:
                needs[active_task[dep]].add(active_task[dep])
    parts = []
    for job_id, tasks in sorted(needs.items()):
        dg = next((x for x in of_stage.values() if x.job_id == job_id), None)
        corr = (dg is not None and g.array and dg.array and len(dg.stages) == len(g.stages)
                and all(per_task[job_id][i] == {dg.stages[i].id} for i in range(len(g.stages))))
        whole = dg is not None and dg.array and tasks == {dg.task(x.id) for x in dg.stages}  # afterok on every task
        parts.append(f"aftercorr:{job_id}" if corr else f"afterok:{job_id}" if whole else
                     "afterok:" + ":".join(sorted(tasks, key=_task_key)))
    return ",".join(parts)


def _current_states(ledger: Ledger, plan: Plan, slurm: "Slurm | None", by_digest: bool = True) -> tuple[dict, dict]:
    """The newest job of each stage (of this plan's digests, unless by_digest is False) and the Slurm state of
    each of those jobs, by task id."""
    current = ledger.current(plan if by_digest else None)
    states = slurm.jobs([c["task"] for c in current.values()]) if (slurm and current) else {}
    return current, states


def _task_key(task: str) -> tuple:
    job, _, idx = task.partition("_")
    return len(job), job, int(idx or -1)  # numeric order for numeric ids


# --------------------------------------------------------------------------------------------- submit


@dataclass
class Submitted:
    groups: list[Group]
    scripts: list[Path]
    skipped_active: list[str]  # stages whose job is still pending or running
    cancelled: list[str]  # blocked tasks of failed inputs, replaced by the new jobs


def _shellquote(v) -> str:
    return shlex.quote(str(v))


def render(plan: Plan, profile: rcp.ProfileConfig, g: Group, name: str, log: str, script: Path, dep: str,
           hold: bool) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), trim_blocks=True,
                             lstrip_blocks=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["shellquote"] = _shellquote
    return env.get_template(TEMPLATE.name).render(
        experiment=plan.experiment, kind=g.kind, stages=[s.id for s in g.stages], array=g.array,
        rendered_at=time.strftime("%Y-%m-%d %H:%M:%S"), dependency=dep, hold=hold, script=script,
        directives=directives(profile, g.kind, name, len(g.stages), log, os.getcwd()),
        setup=list(profile.slurm.setup), python=profile.slurm.python or sys.executable, plan=plan.path,
        max_requeues=profile.slurm.max_requeues)


def submit(plan: Plan, profile: rcp.ProfileConfig, only: list[str] | None = None, hold: bool = False,
           dry_run: bool = False, echo=print) -> Submitted:
    slurm = None if dry_run else Slurm(profile.slurm.conf)
    ledger = Ledger(plan)
    current, states = _current_states(ledger, plan, slurm)
    active, blocked = {}, []
    for sid, c in current.items():
        st = states.get(c["task"])
        if st is None or plan.is_cached(plan.by_id(sid)):
            continue
        if st["state"] in ACTIVE and not any(r in st["reason"] for r in NEVER):
            active[sid] = c["task"]
        elif st["state"] in ACTIVE:
            blocked.append(c["task"])

    selected = select(plan, only)
    todo = [s for s in selected if not plan.is_cached(s) and s.id not in active]
    groups = group(plan, todo, profile)
    if slurm and blocked:
        slurm.scancel(blocked)  # their inputs failed: they are replaced below
    scripts_dir = ledger.dir / ("dry-run" if dry_run else "scripts")
    logs_dir = ledger.dir / "logs"
    scripts_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    of_stage: dict[str, Group] = {}
    scripts = []
    for n, g in enumerate(groups):
        name = f"{plan.experiment}.{g.kind}"
        log = str(logs_dir / (f"{name}-%A_%a.out" if g.array else f"{name}-%j.out"))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        script = scripts_dir / f"{stamp}-{n:02d}-{g.kind}.sbatch"
        if dry_run:
            g.job_id = f"JOB{n}"  # what sbatch would have answered
        dep = dependency(g, of_stage, active)
        script.write_text(render(plan, profile, g, name, log, script, dep, hold))
        scripts.append(script)
        if not dry_run:
            g.job_id = slurm.sbatch(script, dep or None, hold)
            ledger.add({"job_id": g.job_id, "name": name, "kind": g.kind, "stages": [s.id for s in g.stages],
                        "digests": [s.digest for s in g.stages], "array": g.array, "script": str(script),
                        "dependency": dep, "log": log, "submitted": time.time()})
            echo(f"{g.job_id:>8}  {name}  {len(g.stages)} stage(s): {', '.join(s.id for s in g.stages)}"
                 + (f"  (after {dep})" if dep else ""))
        for s in g.stages:
            of_stage[s.id] = g
    return Submitted(groups, scripts, sorted(active), blocked)


# --------------------------------------------------------------------------------------------- status


@dataclass
class StageState:
    stage: str
    state: str  # published | PENDING | RUNNING | FAILED | ... | not submitted
    task: str = ""
    reason: str = ""
    elapsed: str = ""
    restarts: int = 0
    exit_code: str = ""
    log: str = ""
    tail: str = ""  # the stage's own log tail, for failed stages
    job_state: str = ""  # the Slurm state of its job (a published stage's job may still be finishing)


def status(plan: Plan, profile: rcp.ProfileConfig, tail_lines: int = 8) -> list[StageState]:
    current, states = _current_states(Ledger(plan), plan, Slurm(profile.slurm.conf))
    out = []
    for s in plan.stages:
        c = current.get(s.id)
        st = states.get(c["task"], {}) if c else {}
        if plan.is_cached(s):
            state = "published"
        elif not c:
            state = "not submitted"
        else:
            state = st.get("state", "UNKNOWN")
        row = StageState(s.id, state, c["task"] if c else "", st.get("reason", "") if state != "published" else "",
                         st.get("elapsed", ""), st.get("restarts", 0), st.get("exit_code", ""), c["log"] if c else "",
                         job_state=st.get("state", ""))
        if state not in ("published", "not submitted") and state not in ACTIVE:
            logfile = plan.store.partial_dir(s.kind, s.digest) / "log.txt"
            source = logfile if logfile.is_file() else Path(row.log)
            if source.is_file():
                row.tail = "\n".join(source.read_text(errors="replace").splitlines()[-tail_lines:])
        out.append(row)
    return out


def cancel(plan: Plan, profile: rcp.ProfileConfig) -> list[str]:
    """Cancel every pending or running job of the experiment; returns the job ids."""
    slurm = Slurm(profile.slurm.conf)
    current, states = _current_states(Ledger(plan), plan, slurm, by_digest=False)  # every job, whatever the recipe's version
    ids = sorted({c["task"] for c in current.values() if states.get(c["task"], {}).get("state") in ACTIVE},
                 key=_task_key)
    slurm.scancel(ids)
    return ids


def wait(plan: Plan, profile: rcp.ProfileConfig, timeout: float, poll: float = 2.0) -> list[StageState]:
    """Poll until no stage of the experiment has a pending (startable) or running job."""
    deadline = time.time() + timeout
    while True:
        rows = status(plan, profile)
        busy = [r for r in rows if r.job_state in ACTIVE and not any(n in r.reason for n in NEVER)]
        if not busy or time.time() > deadline:
            return rows
        time.sleep(poll)
