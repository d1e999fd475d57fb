"""The paper-style cluster recipe cannot run here (GPUs, vLLM, a 25B-token corpus, the Hugging Face hub): it is
validated, planned and rendered into sbatch scripts, which are checked. The `paper` suite's builder (lm-eval's own
task definitions -> the suite schema) runs for real on lm-eval tasks that exist offline."""

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import make_docs
from harness.plan import Plan

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "nemotron_task_seeded.yaml"
CONTINUATION = REPO / "recipes" / "nemotron_continuation.yaml"


def _misses_only_the_cluster_corpus(cli, recipe: Path, corpus: str) -> None:
    code, out = cli("validate", recipe)
    flat = " ".join(out.split())
    assert code == 2
    assert flat.count("error:") == 1 and f"corpora.{corpus}.paths: no file matches '/data/corpora" in flat, out


def local_args(tmp: Path, corpus: str) -> list[str]:
    """Overrides that put a small local corpus in place of the cluster's, and a budget it can hold."""
    if not (tmp / "web.parquet").is_file():
        pq.write_table(pa.table({"text": make_docs(3000, seed=3)}), tmp / "web.parquet")
    return [f"corpora.{corpus}.paths=[{tmp / 'web.parquet'}]", "data.tokens=2000000", f"store={tmp / 'runs'}"]


def render(tmp: Path, recipe: Path, corpus: str) -> tuple[Plan, dict[str, str], str]:
    """Validated, planned and rendered by `harness submit --dry-run` with local_args; everything else as written:
    (the plan, the sbatch scripts by file stem, the command's output)."""
    from typer.testing import CliRunner

    from harness.cli import app

    args = local_args(tmp, corpus)
    runner = CliRunner()
    res = runner.invoke(app, ["validate", str(recipe), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["submit", str(recipe), *args, "--dry-run"], catch_exceptions=False)
    assert res.exit_code == 0 and "would submit" in res.output, res.output[-3000:]
    exp = tmp / "runs" / recipe.stem
    scripts = {p.stem: p.read_text() for p in sorted((exp / "slurm" / "dry-run").glob("*.sbatch"))}
    return Plan.load(exp / "plan.json"), scripts, res.output


def test_only_the_cluster_corpus_path_is_missing_here(cli):
    _misses_only_the_cluster_corpus(cli, RECIPE, "web")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render(tmp_path_factory.mktemp("paper"), RECIPE, "web")


def _directives(script: str) -> set[str]:
    return {line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")}


def test_plan_has_every_arm_seed_and_both_synthetic_sets(rendered):
    plan, _, out = rendered
    ids = {s.id for s in plan.stages}
    assert {f"train/{a}/seed{k}" for a in ("baseline", "taskqa_5", "taskqa_10", "taskqa_20", "unseeded_5",
                                           "unseeded_10", "unseeded_20") for k in (1, 2, 3)} <= ids
    # the seeded set's size is checked against its 20% arm once the seeds are counted, before generation
    est = plan.by_id("seeds/taskqa").runtime["estimate"]
    assert est["shares"] == {"taskqa_5": 0.05, "taskqa_10": 0.1, "taskqa_20": 0.2} and est["tokens_per_request"] == 110
    assert {"seeds/taskqa", "generate/taskqa/shard0", "generate/taskqa/shard31", "filter/taskqa",
            "generate/unseeded/shard7", "filter/unseeded", "decontam_index", "contamination/web", "suite"} <= ids
    assert "seeds/unseeded" not in ids, "the unseeded control sees no task"
    gen = plan.by_id("generate/taskqa/shard3")
    assert gen.config["shard"] == 3 and gen.config["shards"] == 32
    assert set(plan.by_id("filter/taskqa").deps) == {"index", "seeds"} | {f"items.{i}" for i in range(32)}
    assert gen.config["generator"]["backend"] == "openai" and gen.runtime["server_kind"] == "vllm"
    assert plan.by_id("suite").config["suite"] == "paper"
    assert plan.by_id("seeds/taskqa").config["tasks"] == ["paper_seeded"]
    assert "would submit" in out


def test_training_scripts_span_two_nodes_of_eight_gpus_and_requeue(rendered):
    """Arms whose inputs sit at the same depth of the DAG share an array. A run validates on the base corpus and its
    own synthetic sources only, so the baseline does not wait for any synthetic set."""
    plan, scripts, _ = rendered
    trains = [s for k, s in scripts.items() if k.endswith("train")]
    sizes = sorted(int(re.search(r"--array=0-(\d+)", t).group(1)) + 1 for t in trains)
    assert sizes == [3, 9, 9], sizes  # baseline; unseeded_5/10/20; taskqa_5/10/20 - three seeds each
    base = plan.by_id("train/baseline/seed1").deps.values()
    assert "tokenize/web" in base and not any("taskqa" in d or "unseeded" in d for d in base)
    assert "tokenize/taskqa" in plan.by_id("train/taskqa_5/seed2").deps.values()
    for train in trains:
        d = _directives(train)
        assert {"--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu", "--requeue",
                "--signal=B:USR1@300", "--time=24:00:00"} <= d, d
        # the rest of the profile's train entry, a log that a requeued run appends to, and nothing else
        assert {"--cpus-per-task=12", "--mem=0", "--open-mode=append", "--job-name=nemotron_task_seeded.train",
                f"--chdir={Path.cwd()}"} <= d, d
        (log,) = [x for x in d if x.startswith("--output=")]
        assert log.endswith("/nemotron_task_seeded/slurm/logs/nemotron_task_seeded.train-%A_%a.out"), log
        assert sorted(x.split("=")[0] for x in d) == [
            "--array", "--chdir", "--cpus-per-task", "--gpus-per-node", "--job-name", "--mem", "--nodes",
            "--ntasks-per-node", "--open-mode", "--output", "--partition", "--requeue", "--signal", "--time"], d
    train = trains[-1]
    assert [x for x in train.splitlines() if x.startswith("#SBATCH")] == \
        sorted(x for x in train.splitlines() if x.startswith("#SBATCH")), "directives are sorted"
    assert "source .venv/bin/activate" in train
    assert "aftercorr:JOB" in train.splitlines()[3], "train task i waits for blend task i"
    assert "scontrol requeue" in train and "-m harness run-stage --plan" in train


def test_generation_and_evaluation_jobs(rendered):
    _, scripts, _ = rendered
    gens = [s for k, s in scripts.items() if k.endswith("generate")]
    assert len(gens) == 2, "the unseeded set needs no seeds: it starts at once, the task-seeded one after seeds"
    for gen in gens:
        assert {"--gpus-per-node=1", "--partition=gpu", "--time=12:00:00", "--array=0-31"} <= _directives(gen)
    assert any("generate/taskqa/shard31" in g for g in gens) and any("generate/unseeded/shard0" in g for g in gens)
    filters = [s for k, s in scripts.items() if k.endswith("filter")]
    assert filters and all(re.search(r"afterok:\d+|afterok:JOB", f.splitlines()[3]) for f in filters), \
        "the filter waits for every shard"
    evals = [s for k, s in scripts.items() if k.endswith("eval")]
    assert all("--gpus-per-node=1" in _directives(e) for e in evals)
    assert sum(e.count("  eval/") for e in evals) == 21  # seven arms x three seeds
    tok = next(s for k, s in scripts.items() if k.endswith("tokenizer"))
    assert "--partition=cpu" in _directives(tok) and not any(x.startswith("--gpus") for x in _directives(tok))


def test_paper_suite_builder_reads_lm_eval_tasks(suite_store, tmp_path):
    """The builder on lm-eval task definitions that exist offline (the offline suite's own YAML tasks): every
    split comes back in the suite schema exactly, groups flatten, and the result is an lm-eval task again."""
    from lm_eval.tasks import TaskManager

    from harness.evaluation import lm_eval_suite

    built = next((suite_store / "runs" / "_stages" / "suite").glob("*/manifest.json")).parent / "suite"
    definition = {"source": "lm_eval", "groups": {"seeded": ["arc"], "held_out": ["multi"]},
                  "tasks": {"arc": "offline_arc_easy", "multi": "offline_held_out"}}
    counts = lm_eval_suite.build("check", definition, tmp_path / "suite", tmp_path / "suite",
                                 include_path=str(built / "tasks"))
    original = [json.loads(x) for x in (built / "data" / "arc_easy" / "train.jsonl").read_text().splitlines()]
    copied = [json.loads(x) for x in (tmp_path / "suite" / "data" / "arc" / "train.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: r[k] for k in ("query", "choices", "gold")} for r in rows]  # noqa: E731
    assert strip(copied) == strip(original) and counts["arc"]["train"] == len(original) > 100
    n_held_out = sum(len((built / "data" / t / "validation.jsonl").read_text().splitlines()) for t in ("sciq", "mmlu"))
    assert counts["multi"]["validation"] == n_held_out, "a group is flattened into one task"
    tm = TaskManager(include_path=str(tmp_path / "suite" / "tasks"), include_defaults=False)
    assert {"check_arc", "check_multi", "check_seeded", "check_held_out", "check"} <= set(tm.all_tasks)
    spec = yaml.safe_load((tmp_path / "suite" / "tasks" / "arc.yaml").read_text())
    assert spec["training_split"] == "train" and spec["task"] == "check_arc"


def test_paper_suite_refuses_generation_tasks(suite_store, tmp_path):
    from harness.evaluation import lm_eval_suite

    with pytest.raises(lm_eval_suite.SuiteError, match="no task or group 'no_such_task'"):
        lm_eval_suite.build("x", {"tasks": {"a": "no_such_task"}, "groups": {}}, tmp_path / "s", tmp_path / "s",
                            include_path=str(tmp_path))


def test_continuation_recipe_misses_only_the_cluster_corpus(cli):
    """Its hub base is not read at validation (no config.json at hand offline): the base stage checks it first."""
    _misses_only_the_cluster_corpus(cli, CONTINUATION, "replay")


def test_continuation_recipe_plans_and_renders_the_papers_design(tmp_path):
    """Continuation of a hub base on a replay corpus: the base imported first on a CPU node, every arm and seed
    training from it on two 8-GPU nodes, the base evaluated once; its synthetic sets are the from-scratch paper
    recipe's (same digests: generated once in a shared store)."""
    from harness import recipe as rcp
    from harness.plan import build
    from harness.store import Store

    plan, scripts, _ = render(tmp_path, CONTINUATION, "replay")
    base = plan.by_id("base")
    assert base.config["source"] == {"hub": "Qwen/Qwen2.5-1.5B", "revision": "main"}
    assert plan.by_id("tokenizer").deps == {"base": "base"}
    trains = [s for s in plan.stages if s.kind == "train"]
    assert len(trains) == 18 and all(s.deps["base"] == "base" and s.config["model"] == {"base": True} for s in trains)
    assert {s.config["train"]["schedule"] for s in trains} == {"anneal"}
    assert plan.by_id("eval/base").deps["export"] == "base"
    paper = rcp.load(RECIPE, local_args(tmp_path, "web"))
    pp = build(paper, Store(paper.store))
    for sid in ("seeds/taskqa", "passages/taskqa", "generate/taskqa/shard5", "filter/taskqa",
                "generate/unseeded/shard0", "filter/unseeded"):
        assert plan.by_id(sid).digest == pp.by_id(sid).digest, sid
    base_job = next(s for k, s in scripts.items() if k.endswith("-base"))
    assert {"--partition=cpu", "--mem=256G"} <= _directives(base_job)  # the import holds the base ~4 times in fp32
    assert not any(d.startswith("--gpus") for d in _directives(base_job))
    train_jobs = [s for k, s in scripts.items() if k.endswith("train")]
    assert sum(t.count("  train/") for t in train_jobs) == 18
    assert all({"--nodes=2", "--gpus-per-node=8"} <= _directives(t) for t in train_jobs)
    # every job downstream of the base waits for it: the tokenizer, and through it every training run
    tok = next(s for k, s in scripts.items() if k.endswith("tokenizer"))
    assert "--dependency=afterok:JOB0 " in tok and "  base\n" in base_job


def test_wandb_runs_are_filterable_by_arm_share_and_generator(rendered):
    """Every training and evaluation run's W&B config is flat enough for W&B's run table: the arm, the seed, each
    source's share (`share.<source>`, 0 where an arm does not use it) and the synthetic sets' generator, samples
    per seed and verification; no list anywhere (W&B cannot filter inside one)."""
    from wandb_records import flat

    plan, _, _ = rendered
    for sid in ("train/taskqa_10/seed2", "eval/taskqa_10/seed2", "train/unseeded_20/seed1", "train/baseline/seed3"):
        cfg = flat(plan.by_id(sid).runtime["wandb_config"])
        assert not [k for k, v in cfg.items() if isinstance(v, (list, tuple))], cfg
        assert set(cfg) >= {"experiment", "arm", "seed", "model", "tokens", "share.web", "share.taskqa",
                            "share.unseeded", "synthetic_share"}, cfg
        assert cfg["experiment"] == "nemotron_task_seeded" and cfg["arm"] == sid.split("/")[1]
        assert cfg["seed"] == int(sid[-1])
    taskqa = flat(plan.by_id("train/taskqa_10/seed2").runtime["wandb_config"])
    assert taskqa["share.web"] == 0.9 and taskqa["share.taskqa"] == 0.1 and taskqa["share.unseeded"] == 0.0
    assert taskqa["synthetic.taskqa.generator"] == "Qwen/Qwen2.5-7B-Instruct"
    assert taskqa["synthetic.taskqa.samples_per_seed"] == 80
    assert taskqa["synthetic.taskqa.verification"] == "votes scaled to the options, chance pass <= 0.1, temperature " \
        "0.2, open answers too" and taskqa["synthetic.taskqa.kind"] == "task_seeded"
    assert taskqa["synthetic.taskqa.verifier"] == "microsoft/phi-4"  # another family votes
    unseeded = flat(plan.by_id("train/unseeded_20/seed1").runtime["wandb_config"])
    assert unseeded["synthetic.unseeded.kind"] == "unseeded_qa" and unseeded["share.unseeded"] == 0.2
    # the control is checked as the seeded set is: same protocol, same verifier
    assert (unseeded["synthetic.unseeded.verification"], unseeded["synthetic.unseeded.verifier"]) == \
        (taskqa["synthetic.taskqa.verification"], taskqa["synthetic.taskqa.verifier"])
    assert not any(k.startswith("synthetic.taskqa") for k in unseeded), "only the sets the arm uses"
    baseline = flat(plan.by_id("train/baseline/seed3").runtime["wandb_config"])
    assert baseline["synthetic_share"] == 0.0 and not any(k.startswith("synthetic.") for k in baseline)
