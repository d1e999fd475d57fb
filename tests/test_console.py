"""What a local run shows: plain lines without a terminal (a failing and a succeeding stage through the real
executor and worker), progress at most once per interval with an ETA, and the live view on a terminal."""

import io
import os
import re
import time

from rich.console import Console

from conftest import base_recipe, junk_recipe, write_recipe
from harness import progress
from harness.executors import local
from harness.executors.console import View, describe
from harness.plan import Plan
from harness.stages import StageSpec

STAMP = r"^\d\d:\d\d:\d\d "


def test_a_failing_and_a_succeeding_stage_as_plain_lines(tmp_path, cli):
    path = write_recipe(tmp_path / "r.yaml", junk_recipe(tmp_path))
    code, out = cli("run", path, "--only", "blend")
    assert code == 1, out
    assert re.search(STAMP + r"running tokenizer \(1/7\)$", out, re.M), out
    assert re.search(STAMP + r"done tokenizer in \d+\.\d s$", out, re.M), out
    assert re.search(STAMP + r"done tokenize/web in ", out, re.M), out
    m = re.search(STAMP + r"failed tokenize/junk \(exit 1\) after [\d.]+ s; last lines of (\S+):$", out, re.M)
    assert m, out
    log = m.group(1)
    assert log.endswith(".partial/log.txt") and os.path.isfile(log), "the failed stage's log is kept and named"
    tail = out[m.end():]
    assert "no valid document" in tail and "junk.jsonl:1: missing field" in tail, "the log's tail follows"
    assert re.search(STAMP + r"skipped blend/withjunk/seed1: an input failed$", out, re.M), out
    assert "5 ran, 0 cached, 1 failed, 1 skipped" in out, out
    assert re.search(r"^\d\d:\d\d:\d\d INFO \[tokenize/junk\] tokenizing", tail, re.M), "the tail as logged"
    assert "published" not in out, "the stages' own log lines stay in their logs"


def _spec(sid: str, kind: str) -> StageSpec:
    return StageSpec(sid, kind, {}, digest=sid.replace("/", "-"))


def test_progress_lines_are_rate_limited_and_carry_an_eta():
    buf = io.StringIO()
    spec = _spec("train/a/seed1", "train")
    view = View([spec], Console(file=buf, width=200), live=False, interval=1.0)
    with view:
        view.started(spec)
        t0 = time.monotonic()
        step = 0
        while time.monotonic() - t0 < 2.6:
            step += 1
            view.tick({"what": "step", "done": step, "total": 10_000, "rate": 5100.0, "unit": "tokens",
                       "text": f"loss {5 - step / 1e4:.3f}"})
            time.sleep(0.02)
        view.finished(spec, True, 0, "log.txt", "")
    lines = buf.getvalue().splitlines()
    prog = [l for l in lines if "train/a/seed1: step" in l]
    assert 2 <= len(prog) <= 4, lines  # about one per second over 2.6 s, though it was told ~100 times
    assert all(re.search(r"step [\d,]+/10,000 · loss \d\.\d{3} · 5,100 tokens/s · ETA \d+:\d\d", l) for l in prog[1:])
    done = re.match(STAMP + r"done train/a/seed1 in (\d+\.\d) s$", lines[-1])
    assert done and 2.5 <= float(done[1]) < 10, lines  # 2.6 s, or more where the suite's load held it up


def test_describe():
    assert describe(None) == "starting"
    assert describe({"what": "generate", "done": 3, "total": 180, "rate": 11.2, "unit": "tokens",
                     "text": "0.20 items/s"}, 125) == "generate 3/180 · 0.20 items/s · 11 tokens/s · ETA 2:05"
    assert describe({"what": "requests", "done": 32, "total": 32}) == "requests 32/32"


def test_live_view_on_a_terminal(tmp_path):
    """On a terminal: one view of the stages by kind (done, cached, failed, skipped of each) and the running stage
    with its progress read from the file the stage writes (harness.progress), redrawn in place."""
    buf = io.StringIO()
    a, b, c = _spec("tokenize/web", "tokenize"), _spec("train/x/seed1", "train"), _spec("eval/x/seed1", "eval")
    view = View([a, b, c], Console(file=buf, force_terminal=True, width=120), experiment="toy")
    where = tmp_path / "p.json"
    os.environ[progress.ENV] = str(where)
    try:
        with view:
            view.cached(a)
            view.started(b)
            progress.report("step", 7, 39, rate=812.0, unit="tokens", text="loss 4.900", force=True)
            view.tick(progress.read(where))
            deadline = time.monotonic() + 10  # the live display redraws a few times a second, later under load
            while "812 tokens/s" not in buf.getvalue() and time.monotonic() < deadline:
                time.sleep(0.05)
            shown = buf.getvalue()
            view.finished(b, False, 1, "x/log.txt", "boom: the last line")
            view.skipped(c)
    finally:
        os.environ.pop(progress.ENV)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    assert "running train/x/seed1" in plain and "step 7/39 · loss 4.900 · 812 tokens/s" in plain, plain
    final = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "failed train/x/seed1 (exit 1)" in final and "boom: the last line" in final
    assert re.search(r"train\s+1\s+1", final) and "failed: train/x/seed1" in final, final


def test_a_dead_worker_fails_its_stage_alone(tmp_path, cli):
    """A stage that kills the worker process (here: SIGKILL from within, as the OOM killer would) fails alone:
    the stages after it run in a fresh worker."""
    r = base_recipe(tmp_path)
    path = write_recipe(tmp_path / "r.yaml", r)
    assert cli("run", path, "--only", "tokenize/web")[0] == 0
    plan = Plan.load(tmp_path / "runs" / "toy" / "plan.json")
    victim = plan.by_id("tokenize/qa")
    calls = []

    class KillingView:
        def __getattr__(self, name):
            return lambda *a, **k: calls.append((name, a))

        def tick(self, rec):
            if worker_pid[0] is None:
                import psutil

                kids = []
                for p in psutil.Process().children():  # the worker, not another test's leftover (or zombie) child
                    try:
                        if "harness.executors.worker" in p.cmdline():
                            kids.append(p)
                    except psutil.Error:
                        pass
                if kids:
                    worker_pid[0] = kids[0].pid
                    os.kill(worker_pid[0], 9)

    worker_pid = [None]
    res = local.run(plan, ["tokenize/qa", "blend/base"], view=KillingView())
    assert res.failed == [victim.id] and res.ran == ["blend/base/seed1"], res
    assert plan.is_cached(plan.by_id("blend/base/seed1")) and not plan.is_cached(victim)
    finished = [a for name, a in calls if name == "finished"]
    assert any(a[0].id == victim.id and a[1] is False and a[2] == -9 for a in finished), finished
