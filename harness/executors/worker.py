"""The local executor's warm worker: one process that runs stage after stage of a plan, so that torch, megatron.core,
transformers, lm-eval and W&B's service start once per `harness run`, not once per stage.

    python -m harness.executors.worker PLAN.json

It reads one request per line on stdin ({"stage": ID, "progress": PATH}) and answers each on its original stdout
({"stage": ID, "rc": N}). While a stage runs, the process's stdout and stderr (file descriptors 1 and 2, so that
library warnings, banners and child processes land there too) point at the stage's log file; between stages at
the worker's own log, named by $HARNESS_WORKER_LOG (which tells a stage it runs in the warm worker). A stage that kills the process (a segfault, the OOM killer)
fails alone: the executor starts a fresh worker for the next one.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback


LOG_ENV = "HARNESS_WORKER_LOG"  # set for the worker only: its stages know they share a warm process


def in_worker() -> bool:
    return bool(os.environ.get(LOG_ENV))


def _forget_process_group() -> None:
    """A stage that needed torch.distributed in this lone process (blend, export, evaluation on the checkpoint)
    leaves a process group whose file store was in its work folder, renamed on publishing: the next stage starts
    without it, as a fresh process would."""
    parallel_state = sys.modules.get("megatron.core.parallel_state")
    if parallel_state is not None:
        parallel_state.destroy_model_parallel()
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def serve(plan_path: str) -> int:
    from harness.outputs import output_to
    from harness.plan import Plan

    # the request and reply streams on descriptors of their own, which the processes a stage starts do not inherit
    requests, replies = os.fdopen(os.dup(0)), os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    with output_to(os.environ.get(LOG_ENV, os.devnull)):  # between stages: the worker's own log
        for line in requests:
            _serve_one(Plan.load(plan_path), json.loads(line), replies)  # reloaded: stages published meanwhile
    return 0


def _serve_one(plan, req: dict, replies) -> None:
    from harness.outputs import output_to
    from harness.progress import ENV
    from harness.runner import EXIT_FAILED, run_stage

    spec = plan.by_id(req["stage"])
    if plan.is_cached(spec):  # published by another run meanwhile
        replies.write(json.dumps({"stage": spec.id, "rc": 0}) + "\n")
        return
    partial = plan.store.partial_dir(spec.kind, spec.digest)
    partial.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = req["progress"]
    with output_to(partial / "log.txt"):
        try:
            rc = run_stage(plan, spec.id, echo=False)
        except BaseException:  # what run_stage does not catch (KeyboardInterrupt, SystemExit) fails the stage
            traceback.print_exc()
            rc = EXIT_FAILED
    os.environ.pop(ENV, None)
    _forget_process_group()
    gc.collect()  # the stage's models and datasets, before the next stage loads its own
    replies.write(json.dumps({"stage": spec.id, "rc": rc}) + "\n")


if __name__ == "__main__":  # the guard matters: stages start processes that re-import their parent's main module
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    sys.exit(serve(sys.argv[1]))
