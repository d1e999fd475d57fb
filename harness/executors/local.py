"""The local executor: each stage that is not cached runs as `python -m harness run-stage` in a child process,
in dependency order; a failed stage stops its dependents and its log tail is printed."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

from harness.plan import Plan, select
from harness.stages import StageSpec

LOG_TAIL = 30


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # a dependency failed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def stage_command(plan: Plan, spec: StageSpec) -> list[str]:
    return [sys.executable, "-m", "harness", "run-stage", "--plan", str(plan.path), "--stage", spec.id]


def log_tail(plan: Plan, spec: StageSpec, n: int = LOG_TAIL) -> str:
    log = plan.store.partial_dir(spec.kind, spec.digest) / "log.txt"
    if not log.is_file():
        return f"(no log at {log})"
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def run(plan: Plan, only: list[str] | None = None, echo=print) -> Outcome:
    todo = select(plan, only)
    out = Outcome()
    broken: set[str] = set()
    for spec in todo:
        if plan.is_cached(spec):
            out.cached.append(spec.id)
            continue
        if any(dep in broken for dep in spec.deps.values()):
            out.skipped.append(spec.id)
            broken.add(spec.id)
            echo(f"[yellow]skipped[/] {spec.id}: an input failed")
            continue
        echo(f"[bold]running[/] {spec.id}")
        rc = subprocess.call(stage_command(plan, spec))
        if rc == 0 and plan.is_cached(spec):
            out.ran.append(spec.id)
        else:
            out.failed.append(spec.id)
            broken.add(spec.id)
            logfile = plan.store.partial_dir(spec.kind, spec.digest) / "log.txt"
            echo(f"[red]failed[/] {spec.id} (exit {rc}); last lines of {logfile}:")
            echo(log_tail(plan, spec), markup=False)
    return out
