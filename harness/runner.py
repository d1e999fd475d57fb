"""The one entry point every executor runs: `python -m harness run-stage --plan PLAN --stage ID`.

It takes the stage's lock, works in the stage's .partial folder (which survives a crash, so sharded stages resume),
logs to <partial>/log.txt and the terminal, and publishes the folder with its manifest in one rename when the
stage returns. A stage that raises leaves nothing published and exits non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import sys
import time
import traceback
import warnings
from pathlib import Path

from harness import stages
from harness.plan import Plan
from harness.stages import EXIT_REQUEUE, StageContext, StageInterrupted
from harness.store import StageLocked, environment

# megatron.core warns at import that the GPU-only fused kernels are absent; on a CPU that is expected
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

EXIT_FAILED = 1
EXIT_LOCKED = 3


def _logger(spec_id: str, logfile, echo: bool) -> logging.Logger:
    log = logging.getLogger(f"harness.stage.{spec_id}")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s [" + spec_id + "] %(message)s", "%H:%M:%S")
    # echo: also to stderr (a stage run on its own, a Slurm job's output); the local executor's worker points
    # stderr at this same log file, so it logs once
    for h in (logging.FileHandler(logfile), *([logging.StreamHandler(sys.stderr)] if echo else [])):
        h.setFormatter(fmt)
        log.addHandler(h)
    return log


def devices() -> dict:
    """What this attempt holds: nodes, GPUs and CPU cores, from Slurm's allocation where there is one, else from
    CUDA_VISIBLE_DEVICES and the machine (unset CUDA_VISIBLE_DEVICES outside Slurm counts as no GPU)."""
    env = os.environ
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    if env.get("SLURM_GPUS_ON_NODE"):
        gpus = int(env["SLURM_GPUS_ON_NODE"]) * nodes
    else:
        gpus = len([d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip() not in ("", "-1")])
    cpus = int(env.get("SLURM_CPUS_ON_NODE") or os.cpu_count() or 1) * nodes
    return {"nodes": nodes, "gpus": gpus, "cpus": cpus}


ATTEMPTS = "attempts.jsonl"


def _begin_attempt(partial: Path) -> int:
    """Record an attempt's start in the partial folder (it survives failures, kills and requeues). An earlier
    attempt that never recorded its end was killed: its end is taken as the last write in the folder."""
    past = read_attempts(partial)
    if past and past[-1]["outcome"] == "running":
        last = max((p.stat().st_mtime for p in partial.rglob("*") if p.is_file() and p.name != ATTEMPTS),
                   default=past[-1]["started"])
        _append(partial, {"attempt": past[-1]["attempt"], "ended": max(last, past[-1]["started"]),
                          "outcome": "killed"})
    n = len(past) + 1
    _append(partial, {"attempt": n, "started": time.time(), "host": socket.gethostname(),
                      "job": os.environ.get("SLURM_JOB_ID"), **devices()})
    return n


def _append(partial: Path, rec: dict) -> None:
    with open(partial / ATTEMPTS, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_attempts(folder: Path) -> list[dict]:
    """Every attempt of a stage, in order: its start record with `ended`, `seconds` and `outcome` (done,
    interrupted, failed, killed; running while it runs)."""
    out: dict[int, dict] = {}
    path = folder / ATTEMPTS
    for line in path.read_text().splitlines() if path.is_file() else []:
        rec = json.loads(line)
        if "started" in rec:
            out[rec["attempt"]] = {**rec, "outcome": "running"}
        elif rec["attempt"] in out:
            a = out[rec["attempt"]]
            a.update(rec, seconds=round(rec["ended"] - a["started"], 3))
    return [out[k] for k in sorted(out)]


def run_stage(plan: Plan, stage_id: str, echo: bool = True) -> int:
    spec = plan.by_id(stage_id)
    store = plan.store
    if plan.is_cached(spec):
        print(f"{stage_id}: cached ({plan.dir(spec)})", file=sys.stderr)
        return 0
    deps = {name: plan.by_id(dep) for name, dep in spec.deps.items()}
    missing = [d.id for d in deps.values() if not plan.is_cached(d)]
    if missing:
        print(f"{stage_id}: inputs not ready: {', '.join(missing)}", file=sys.stderr)
        return EXIT_FAILED
    try:
        with store.lock(spec.kind, spec.digest, stage_id):
            if plan.is_cached(spec):  # published by another process while we waited
                return 0
            partial = store.partial_dir(spec.kind, spec.digest)
            partial.mkdir(parents=True, exist_ok=True)
            log = _logger(stage_id, partial / "log.txt", echo)
            ctx = StageContext(spec, partial, {n: plan.dir(d) for n, d in deps.items()},
                               {n: store.manifest(d.kind, d.digest) for n, d in deps.items()}, log, plan.dir(spec))
            t0, started = time.perf_counter(), time.time()
            attempt = _begin_attempt(partial)

            def end(outcome: str) -> None:
                _append(partial, {"attempt": attempt, "ended": time.time(), "outcome": outcome})

            try:
                result = stages.get(spec.kind)().run(ctx)
            except StageInterrupted as e:
                log.warning("interrupted: %s", e)
                end("interrupted")
                return EXIT_REQUEUE
            except Exception as e:
                log.error("stage failed: %s: %s\n%s", type(e).__name__, e, traceback.format_exc())
                end("failed")
                return EXIT_FAILED
            end("done")
            attempts = read_attempts(partial)
            outputs = sorted(str(p.relative_to(partial)) for p in partial.rglob("*")
                             if p.is_file() and p.name != ATTEMPTS)
            manifest = {
                "stage": spec.id, "kind": spec.kind, "digest": spec.digest, "version": stages.get(spec.kind).version,
                "experiment": plan.experiment, "config": spec.config, "runtime": spec.runtime,
                "inputs": {n: {"stage": d.id, "digest": d.digest, "dir": str(plan.dir(d))} for n, d in deps.items()},
                "result": result, "outputs": outputs,
                "timing": {"started": started, "seconds": round(time.perf_counter() - t0, 3),
                           "all_attempts_seconds": round(sum(a["seconds"] for a in attempts), 3)},
                "attempts": attempts,
                "command": shlex.join(sys.argv), **environment(),
            }
            store.publish(partial, plan.dir(spec), manifest)
            log.info("published %s in %.1f s", plan.dir(spec), manifest["timing"]["seconds"])
            for h in log.handlers:
                h.close()
            return 0
    except StageLocked as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_LOCKED
