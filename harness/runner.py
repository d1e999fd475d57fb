"""The one entry point every executor runs: `python -m harness run-stage --plan PLAN --stage ID`.

It takes the stage's lock, works in the stage's .partial folder (which survives a crash, so sharded stages resume),
logs to <partial>/log.txt and the terminal, and publishes the folder with its manifest in one rename when the
stage returns. A stage that raises leaves nothing published and exits non-zero.
"""

from __future__ import annotations

import logging
import warnings
import shlex
import sys
import time
import traceback

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
            try:
                result = stages.get(spec.kind)().run(ctx)
            except StageInterrupted as e:
                log.warning("interrupted: %s", e)
                return EXIT_REQUEUE
            except Exception as e:
                log.error("stage failed: %s: %s\n%s", type(e).__name__, e, traceback.format_exc())
                return EXIT_FAILED
            outputs = sorted(str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file())
            manifest = {
                "stage": spec.id, "kind": spec.kind, "digest": spec.digest, "version": stages.get(spec.kind).version,
                "experiment": plan.experiment, "config": spec.config, "runtime": spec.runtime,
                "inputs": {n: {"stage": d.id, "digest": d.digest, "dir": str(plan.dir(d))} for n, d in deps.items()},
                "result": result, "outputs": outputs,
                "timing": {"started": started, "seconds": round(time.perf_counter() - t0, 3)},
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
