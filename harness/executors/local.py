"""The local executor: the stages that are not cached run in dependency order in one warm worker process
(harness.executors.worker), which pays the libraries' start-up once; a stage that kills the worker fails alone and
the next one gets a fresh worker. A failed stage stops its dependents and its log tail is printed. What the console
shows is harness.executors.console's."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import progress
from harness.children import die_with_parent
from harness.executors.worker import LOG_ENV
from harness.plan import Plan, select as select_stages
from harness.stages import StageSpec

LOG_TAIL = 30
POLL = 0.25  # seconds between looks at the running stage's progress


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # a dependency failed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def log_path(plan: Plan, spec: StageSpec) -> Path:
    return plan.store.partial_dir(spec.kind, spec.digest) / "log.txt"


def log_tail(path: Path, n: int = LOG_TAIL) -> str:
    if not path.is_file():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


class Worker:
    """One warm worker process, started when first needed and again after one died."""

    def __init__(self, plan: Plan, folder: Path):
        self.plan, self.folder = plan, folder
        self.proc: subprocess.Popen | None = None
        self.log = folder / "worker.log"

    def run(self, spec: StageSpec, tick) -> int:
        """Runs one stage; `tick(progress record or None)` is called a few times a second meanwhile."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-m", "harness.executors.worker", str(self.plan.path)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                         env={**os.environ, LOG_ENV: str(self.log)}, preexec_fn=die_with_parent)
        where = self.folder / f"{spec.digest}.progress.json"
        self.proc.stdin.write(json.dumps({"stage": spec.id, "progress": str(where)}) + "\n")
        self.proc.stdin.flush()
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], POLL)
            tick(progress.read(where))
            if ready:
                line = self.proc.stdout.readline()
                if not line:  # the worker died with the stage: its status is the stage's
                    rc = self.proc.wait()
                    self.proc = None
                    return rc if rc else 1
                return int(json.loads(line)["rc"])

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            self.proc = None


def run(plan: Plan, only: list[str] | None = None, view=None) -> Outcome:
    """Runs the selection; `view` (harness.executors.console.View) is told each stage's state and progress."""
    todo = select_stages(plan, only)
    if view is None:  # plain lines on stderr
        from rich.console import Console

        from harness.executors.console import View

        view = View(todo, Console(stderr=True), live=False)
    out = Outcome()
    broken: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="harness-run-") as tmp:
        worker = Worker(plan, Path(tmp))
        try:
            for spec in todo:
                if plan.is_cached(spec):
                    out.cached.append(spec.id)
                    view.cached(spec)
                    continue
                if any(dep in broken for dep in spec.deps.values()):
                    out.skipped.append(spec.id)
                    broken.add(spec.id)
                    view.skipped(spec)
                    continue
                view.started(spec)
                rc = worker.run(spec, view.tick)
                ok = rc == 0 and plan.is_cached(spec)
                if ok:
                    out.ran.append(spec.id)
                else:
                    out.failed.append(spec.id)
                    broken.add(spec.id)
                tail = "" if ok else log_tail(log_path(plan, spec))
                if not ok and worker.proc is None and worker.log.is_file():  # it died: what it said last
                    tail += "\n(the worker process ended: " + (log_tail(worker.log, 5) or "no output") + ")"
                view.finished(spec, ok, rc, str(log_path(plan, spec)), tail)
        finally:
            worker.close()
    return out
