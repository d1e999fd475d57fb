"""What a local run shows while it works: on a terminal one live view (rich) of the stages by kind with their
states and the running stage's progress and ETA; without one (CI, a Slurm job's output, a pipe) the same facts as
plain lines, a stage's progress at most once every `interval` seconds. Library output goes to the stages' log
files (the worker points it there); a failed stage's log tail is printed here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from harness.stages import StageSpec

STATES = ("done", "cached", "failed", "skipped")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def describe(progress: dict | None, eta: float | None = None) -> str:
    """`step 56/73 · loss 4.21 · 5,100 tokens/s · ETA 0:20` from a stage's progress record (harness.progress)."""
    if not progress:
        return "starting"
    done, total, rate = progress.get("done") or 0, progress.get("total"), progress.get("rate")
    def num(x) -> str:  # counts as integers, amounts (MB) with a decimal
        return f"{x:,.0f}" if float(x).is_integer() or abs(x) >= 100 else f"{x:,.1f}"

    parts = [f"{progress.get('what', '')} {num(done)}" + (f"/{num(total)}" if total else "")]
    if progress.get("text"):
        parts.append(progress["text"])
    if rate:
        parts.append(f"{rate:,.0f} {progress.get('unit') or 'items'}/s")
    if eta is not None:
        parts.append(f"ETA {_duration(eta)}")
    return " · ".join(parts)


@dataclass
class _Running:
    spec: StageSpec
    started: float
    progress: dict | None = None
    first: tuple[float, float, str] | None = None  # (when, done, what) of the phase's first report: the ETA
    # leaves start-up out
    said: float = 0.0  # when its progress was last printed as a line
    said_text: str = ""


@dataclass
class View:
    stages: list[StageSpec]  # the selection, in run order
    console: Console
    live: bool | None = None  # None: when the console is a terminal
    interval: float = 5.0
    experiment: str = ""
    states: dict[str, str] = field(default_factory=dict)
    running: _Running | None = None
    failures: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.live is None:
            self.live = self.console.is_terminal
        self.t0 = time.monotonic()
        self._live: Live | None = None
        self.kinds = list(dict.fromkeys(s.kind for s in self.stages))

    # ---------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "View":
        if self.live:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    def _line(self, text: str, markup: bool = True) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.console.print(f"[dim]{stamp}[/] {text}" if markup else f"{stamp} {text}", markup=markup,
                           highlight=False, soft_wrap=True)

    # ---------------------------------------------------------------------------------------- events
    def cached(self, spec: StageSpec) -> None:
        self.states[spec.id] = "cached"
        self._refresh()

    def skipped(self, spec: StageSpec) -> None:
        self.states[spec.id] = "skipped"
        self._print(f"[yellow]skipped[/] {escape(spec.id)}: an input failed")
        self._refresh()

    def started(self, spec: StageSpec) -> None:
        self.running = _Running(spec, time.monotonic())
        if not self.live:
            n = sum(1 for s in self.states.values() if s in STATES) + 1
            self._line(f"[bold]running[/] {escape(spec.id)} [dim]({n}/{len(self.stages)})[/]")
        self._refresh()

    def tick(self, progress: dict | None) -> None:
        r = self.running
        if r is None:
            return
        now = time.monotonic()
        if progress is not None:
            done, what = progress.get("done") or 0, progress.get("what", "")
            if r.first is None or what != r.first[2] or done < r.first[1]:  # a new phase counts afresh
                r.first = (now, done, what)
            r.progress = progress
        if self.live:
            self._refresh()
        elif r.progress and now - r.said >= self.interval:
            text = describe(r.progress, self._eta(r, now))
            if text != r.said_text:
                self._line(f"{escape(r.spec.id)}: {escape(text)}")
                r.said, r.said_text = now, text

    @staticmethod
    def _eta(r: _Running, now: float) -> float | None:
        p = r.progress or {}
        done, total = p.get("done") or 0, p.get("total")
        if not total or r.first is None or done <= r.first[1] or done >= total:
            return None
        return (now - r.first[0]) / (done - r.first[1]) * (total - done)

    def finished(self, spec: StageSpec, ok: bool, rc: int, log: str, tail: str) -> None:
        took = time.monotonic() - (self.running.started if self.running else self.t0)
        self.running = None
        self.states[spec.id] = "done" if ok else "failed"
        if ok:
            if not self.live:
                self._line(f"[green]done[/] {escape(spec.id)} in {_duration(took)}")
        else:
            self.failures.append(spec.id)
            self._print(f"[red]failed[/] {escape(spec.id)} (exit {rc}) after {_duration(took)}; last lines of "
                        f"{escape(log)}:")
            self.console.print(tail, markup=False, highlight=False, soft_wrap=True)  # as logged, unstamped
        self._refresh()

    # ---------------------------------------------------------------------------------------- output
    def _print(self, text: str, markup: bool = True) -> None:
        if self.live:  # above the live region, which stays at the bottom
            self.console.print(text, markup=markup, highlight=False, soft_wrap=True)
        else:
            self._line(text, markup=markup)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self):
        t = Table(title=f"{self.experiment} · {len(self.stages)} stages · {_duration(time.monotonic() - self.t0)}",
                  title_justify="left", box=None, pad_edge=False)
        for col in ("kind", *STATES, "total"):
            t.add_column(col, justify="left" if col == "kind" else "right")
        colour = {"done": "green", "cached": "cyan", "failed": "red", "skipped": "yellow"}
        for kind in self.kinds:
            ids = [s.id for s in self.stages if s.kind == kind]
            counts = {st: sum(self.states.get(i) == st for i in ids) for st in STATES}
            run = self.running is not None and self.running.spec.kind == kind
            t.add_row(Text(kind, style="bold" if run else ""),
                      *[Text(str(counts[st]) if counts[st] else "", style=colour[st]) for st in STATES], str(len(ids)))
        parts = [t]
        if self.running is not None:
            r = self.running
            parts.append(Text.assemble(("running ", "bold"), r.spec.id, "  ",
                                       (describe(r.progress, self._eta(r, time.monotonic())), "cyan"),
                                       f"  ({_duration(time.monotonic() - r.started)})"))
        if self.failures:
            parts.append(Text("failed: " + ", ".join(self.failures), style="red"))
        return Group(*parts)
