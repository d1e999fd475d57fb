"""The run store and the local executor on a real recipe: plan, cache hits, invalidation of one arm only,
manifests, locks, failures that stop dependents, --only and --dry-run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import base_recipe, junk_recipe, make_docs, write_jsonl, write_recipe
from harness import recipe as rcp
from harness.generation import models
from harness.plan import Plan, build
from harness.store import Store


def stage_dirs(store_root):
    return {p.name for p in (store_root / "_stages").glob("*/*") if p.is_dir() and not p.name.endswith(".partial")}


def test_run_cache_and_invalidate_one_arm(tmp_path, cli):
    r = base_recipe(tmp_path)
    path = write_recipe(tmp_path / "r.yaml", r)
    code, out = cli("plan", path)
    assert code == 0 and "12 stages: 0 cached, 12 to run" in out, out
    for sid in ("tokenizer", "tokenize/web", "tokenize/qa", "blend/base/seed1", "blend/mixed/seed1",
                "train/base/seed1", "export/mixed/seed1"):
        assert sid in out

    code, out = cli("run", path, "--only", "blend")  # training is tested in test_training.py
    assert code == 0, out
    assert "5 ran" in out
    before = stage_dirs(tmp_path / "runs")
    assert len(before) == 5

    # every published stage has a complete manifest
    plan = Plan.load(tmp_path / "runs" / "toy" / "plan.json")
    published = [s for s in plan.stages if plan.is_cached(s)]
    assert [s.kind for s in published] == ["tokenizer", "tokenize", "tokenize", "blend", "blend"]
    for spec in published:
        m = json.loads((plan.dir(spec) / "manifest.json").read_text())
        assert m["digest"] == spec.digest and m["config"] == spec.config
        assert m["versions"]["megatron-core"] == "0.16.1" and m["host"] and m["timing"]["seconds"] >= 0
        assert set(m["inputs"]) == set(spec.deps)
    tok = json.loads((plan.dir(plan.by_id("tokenize/web")) / "manifest.json").read_text())["result"]
    assert tok["documents"] == 600 and tok["tokens"] > 0 and tok["malformed"] == 0

    code, out = cli("run", path, "--only", "blend")
    assert code == 0 and "nothing to run" in out and "all 2 stages" in out

    # change one arm's shares: only that arm's blend runs again
    r["arms"][1]["mix"] = {"web": 0.6, "qa": 0.4}
    write_recipe(path, r)
    code, out = cli("plan", path)
    assert "12 stages: 4 cached, 8 to run" in out, out  # the mixed blend; suite, training, eval never run
    code, out = cli("run", path, "--only", "blend")
    assert code == 0 and "1 ran, 1 cached" in out, out
    after = stage_dirs(tmp_path / "runs")
    assert before < after and len(after - before) == 1

    # a second experiment over the same corpus reuses the tokenizer and tokenized corpus
    # (an arm with the same mixture and budget is the same blend: nothing runs at all)
    r2 = dict(r, experiment="other", arms=[{"name": "solo", "mix": {"web": 1.0}}], report={"baseline": "solo"})
    code, out = cli("run", write_recipe(tmp_path / "r2.yaml", r2), "--only", "blend")
    assert code == 0 and "nothing to run: all 1 stages of 'other' are cached" in out, out
    code, out = cli("run", tmp_path / "r2.yaml", "data.tokens=30000", "--only", "blend")
    assert code == 0 and "1 ran, 0 cached" in out, out

    code, out = cli("ls", "--store", tmp_path / "runs")
    assert "toy" in out and "other" in out
    code, out = cli("ls", "toy", "--store", tmp_path / "runs")
    assert "published" in out and "blend/mixed/seed1" in out


def test_blend_realises_shares_and_is_deterministic(tmp_path, cli):
    r = base_recipe(tmp_path, seeds=[1, 2])
    r["data"]["vary_order_with_seed"] = True
    path = write_recipe(tmp_path / "r.yaml", r)
    assert cli("run", path, "--only", "blend")[0] == 0
    plan = Plan.load(tmp_path / "runs" / "toy" / "plan.json")
    m1 = json.loads((plan.dir(plan.by_id("blend/mixed/seed1")) / "blend.json").read_text())
    shares = {s["name"]: s["realised_share"] for s in m1["sources"]}
    assert abs(shares["web"] - 0.7) <= 0.007 and abs(shares["qa"] - 0.3) <= 0.003
    assert m1["samples"] * 64 >= 40_000

    # rebuild the same blends through megatron.core from the published inputs and compare sample order
    from harness.data import blend as bl
    from harness.data.tokenizer import MegatronTokenizer

    def order(seed, cache):
        tok = json.loads((plan.dir(plan.by_id("tokenizer")) / "manifest.json").read_text())["result"]
        plans = [bl.SourcePlan(s["name"], s["prefix"], s["share"], s["target_tokens"], s["available_tokens"],
                               s["epochs"]) for s in m1["sources"]]
        train, _ = bl.build(plans, 40_000, 64, "98,2,0", seed, str(cache),
                            MegatronTokenizer(plan.dir(plan.by_id("tokenizer")) / "tokenizer.json",
                                              tok["eod_id"], tok["vocab_size"]))
        return [train[i]["tokens"].tolist() for i in range(20)], list(train.dataset_index[:200])

    a_tokens, a_ids = order(1, tmp_path / "c1")
    b_tokens, b_ids = order(1, tmp_path / "c2")
    c_tokens, _ = order(2, tmp_path / "c3")
    assert a_tokens == b_tokens and a_ids == b_ids, "same seed, same sample order"
    assert a_tokens != c_tokens, "another seed gives another order"
    # the published seed-1 blend used the same order: megatron's cached train indices (files named by a hash of
    # the dataset config, seed included: the blend's dataset_index/dataset_sample_index, each source's document,
    # sample and seed-dependent shuffle indices) are the ones the rebuild wrote, entry for entry
    def train_indices(cache):
        return {p.name: np.load(p) for p in cache.glob("*-train-*.npy")}

    published = train_indices(plan.dir(plan.by_id("blend/mixed/seed1")) / "cache")
    rebuilt = train_indices(tmp_path / "c1")
    assert sorted(published) == sorted(rebuilt), "the published blend was built from another config (seed?)"
    kinds = sorted(n.split("-", 1)[1] for n in published)
    assert kinds == sorted(["BlendedDataset-train-dataset_index.npy", "BlendedDataset-train-dataset_sample_index.npy"]
                           + [f"GPTDataset-train-{k}_index.npy" for k in ("document", "sample", "shuffle")] * 2), kinds
    for name, arr in published.items():
        assert np.array_equal(arr, rebuilt[name]), f"published {name} differs from the rebuild"
    (ds_index,) = [v for n, v in published.items() if n.endswith("-dataset_index.npy")]
    assert ds_index[:200].tolist() == a_ids and len(ds_index) == m1["samples"]


def test_too_many_epochs_refused_with_amount(tmp_path, cli):
    r = base_recipe(tmp_path)
    r["data"]["tokens"] = 300_000  # qa (~30k tokens) at 30% would be repeated ~3x; web (~130k) at 70% 1.6x
    r["data"]["max_epochs"] = 1.5
    path = write_recipe(tmp_path / "r.yaml", r)
    code, out = cli("run", path, "--only", "blend")
    assert code == 1
    flat = " ".join(out.split())
    assert "failed blend/mixed/seed1" in flat and "would be repeated" in flat and "add at least" in flat
    assert "source 'qa'" in flat and "source 'web'" in flat


def test_failing_stage_stops_dependents_and_shows_log(tmp_path, cli):
    path = write_recipe(tmp_path / "r.yaml", junk_recipe(tmp_path))
    code, out = cli("run", path, "--only", "blend")
    assert code == 1
    flat = " ".join(out.split())
    assert "failed tokenize/junk" in flat and "no valid document" in flat and "junk.jsonl:1: missing field" in flat
    assert "skipped blend/withjunk/seed1" in flat
    plan = Plan.load(tmp_path / "runs" / "toy" / "plan.json")
    assert plan.is_cached(plan.by_id("blend/mixed/seed1")), "independent arms still run"
    assert not plan.is_cached(plan.by_id("tokenize/junk"))


def test_only_and_dry_run(tmp_path, cli):
    path = write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path))
    code, out = cli("run", path, "--dry-run")
    assert code == 0 and "would run: tokenizer, suite, tokenize/web, tokenize/qa" in " ".join(out.split())
    assert not stage_dirs(tmp_path / "runs") and not (tmp_path / "runs" / "toy").exists()
    code, out = cli("run", path, "--only", "tokenize/web")
    assert code == 0 and "2 ran" in out  # the tokenizer it needs, then itself
    code, out = cli("run", path, "--only", "blend/nope")
    assert code == 2 and "no such stage" in out


def test_locked_stage_is_refused(tmp_path, cli):
    r = rcp.load(write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path)))
    plan = build(r, Store(tmp_path / "runs"))
    plan.save(r)
    spec = plan.by_id("tokenizer")
    with plan.store.lock(spec.kind, spec.digest, spec.id):
        res = subprocess.run([sys.executable, "-m", "harness", "run-stage", "--plan", str(plan.path), "--stage",
                              "tokenizer"], capture_output=True, text=True)
    assert res.returncode == 3 and "is being run by pid" in res.stderr
    assert not plan.is_cached(spec)


def test_moved_corpus_is_still_a_cache_hit(tmp_path, cli):
    r = base_recipe(tmp_path)
    r["tokenizer"]["train_on"] = ["web"]
    path = write_recipe(tmp_path / "r.yaml", r)
    assert cli("run", path, "--only", "tokenize")[0] == 0
    (tmp_path / "moved").mkdir()
    for name in ("web", "qa"):
        (tmp_path / "corpora" / f"{name}.jsonl").rename(tmp_path / "moved" / f"{name}.jsonl")
    r["corpora"] = {"web": {"paths": ["moved/web.jsonl"]}, "qa": {"paths": ["moved/qa.jsonl"]}}
    code, out = cli("plan", write_recipe(path, r))
    assert "12 stages: 3 cached" in out, out
    # but a changed corpus is not
    write_jsonl(tmp_path / "moved" / "qa.jsonl", make_docs(300, seed=99, mean_words=60))
    code, out = cli("plan", path)
    assert "12 stages: 2 cached" in out, out


def test_quickstart_recipe_validates_and_plans(cli, tmp_path):
    from pathlib import Path

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
    code, out = cli("plan", recipe, "--store", tmp_path / "store")
    assert code == 0, out
    for sid in ("tokenizer", "suite", "seeds/seedqa", "render/seedqa", "tokenize/seedqa", "blend/taskqa_2/seed2",
                "seeds/taskqa", "generate/taskqa", "filter/taskqa", "generate/unseeded", "decontam_index",
                "train/baseline/seed2", "export/unseeded_2/seed1", "eval/seedqa_10/seed1"):
        assert sid in out


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / ".cache" / "assets" / "sotu.jsonl").is_file(),
                    reason="run `harness assets` (make setup) first")
def test_synthetic_cpu_recipe_validates_and_plans(cli, tmp_path):
    """recipes/synthetic_cpu.yaml: both generated sets (task-seeded from the suite's train splits, the unseeded
    control from the corpus) go through generation, the filters (decontaminated against the eval index), rendering
    and tokenization into their arm's blend; the base corpus is checked against the same index."""
    recipe = ROOT / "recipes" / "synthetic_cpu.yaml"
    code, out = cli("validate", recipe)
    assert code == 0, out
    assert "experiment 'synthetic_cpu', 3 arm(s) x 1 seed(s), 200,000 tokens per run" in " ".join(out.split()), out
    code, out = cli("plan", recipe, "--store", tmp_path / "store")
    assert code == 0, out
    assert "28 stages: 0 cached, 28 to run" in out, out
    r = rcp.load(recipe)
    p = build(r, Store(tmp_path / "store"))
    for name in ("taskqa", "unseeded"):
        assert f"passages/{name}" in p.by_id(f"generate/{name}").deps.values()
        assert set(p.by_id(f"filter/{name}").deps.values()) >= {f"generate/{name}", "decontam_index"}
        assert set(p.by_id(f"render/{name}").deps.values()) == {f"filter/{name}"}
        assert set(p.by_id(f"tokenize/{name}").deps.values()) == {f"render/{name}", "tokenizer"}
        assert f"tokenize/{name}" in p.by_id(f"blend/{name}_5/seed1").deps.values()
    assert set(p.by_id("passages/taskqa").deps.values()) == {"seeds/taskqa"}  # for the grounded requests
    assert not p.by_id("passages/unseeded").deps  # the corpus passages it is asked about
    assert set(p.by_id("contamination/sotu").deps.values()) == {"decontam_index"}
    assert set(p.by_id("eval/unseeded_5/seed1").deps.values()) >= {"export/unseeded_5/seed1", "suite"}
    assert r.corpora["sotu"].paths == [str(ROOT / ".cache" / "assets" / "sotu.jsonl")]


def test_seed_render_source_from_train_splits(tmp_path, cli):
    r = base_recipe(tmp_path)
    r["synthetic"] = {"seedqa": {"kind": "seed_render", "tasks": ["offline_arc_easy", "offline_winogrande"],
                                 "per_task_cap": 300, "layout": "mc", "items_per_doc": 4}}
    r["arms"].append({"name": "seeded", "mix": {"web": 0.8, "seedqa": 0.2}})
    path = write_recipe(tmp_path / "r.yaml", r)
    code, out = cli("run", path, "--only", "blend/seeded")
    assert code == 0, out
    plan = Plan.load(tmp_path / "runs" / "toy" / "plan.json")
    seeds_dir = plan.dir(plan.by_id("seeds/seedqa"))
    seeds = [json.loads(l) for l in (seeds_dir / "seeds.jsonl").read_text().splitlines()]
    assert len(seeds) == 600 and {s["task"] for s in seeds} == {"offline_arc_easy", "offline_winogrande"}
    assert all(s["split"] == "train" and "/train/" in s["seed_id"] for s in seeds), "seeds come from train splits only"
    arc = next(s for s in seeds if s["task"] == "offline_arc_easy")
    assert arc["choices"][arc["answer_index"]] == arc["answer_text"] and not arc["question"].startswith("Question:")
    m = plan.store.manifest("seeds", plan.by_id("seeds/seedqa").digest)["result"]
    assert m["per_task"]["offline_arc_easy"] == {"train_docs": 2251, "seeds": 300}
    docs = [json.loads(l)["text"] for l in (plan.dir(plan.by_id("render/seedqa")) / "data.jsonl").read_text().splitlines()]
    assert len(docs) == 150 and docs[0].count("Question:") == 4 and "\nA. " in docs[0]
    blend = json.loads((plan.dir(plan.by_id("blend/seeded/seed1")) / "blend.json").read_text())
    assert abs({s["name"]: s["realised_share"] for s in blend["sources"]}["seedqa"] - 0.2) < 0.01


def test_task_without_train_split_cannot_seed(tmp_path, cli):
    r = base_recipe(tmp_path)
    """Refused when the recipe is read, before any stage runs: NQ-open is packaged with its validation split only."""
    r["synthetic"] = {"seedqa": {"kind": "seed_render", "tasks": ["offline_nq_open"]}}
    r["arms"].append({"name": "seeded", "mix": {"web": 0.8, "seedqa": 0.2}})
    code, out = cli("run", write_recipe(tmp_path / "r.yaml", r), "--only", "seeds")
    assert code == 2 and not (tmp_path / "runs").exists()
    assert "synthetic.seedqa.tasks: 'offline_nq_open': nq_open has no train split to seed from" in " ".join(out.split())


def test_blend_of_a_source_with_a_few_documents(tmp_path, cli):
    """A synthetic set of three documents has no document in its valid split; megatron.core loops forever on
    such a split, so the blend builds the train split alone (found with the quickstart's generated sets)."""
    r = base_recipe(tmp_path)
    write_jsonl(tmp_path / "corpora" / "few.jsonl", make_docs(3, seed=5, mean_words=150))
    r["corpora"]["few"] = {"paths": ["corpora/few.jsonl"]}
    r["data"]["max_epochs"] = 20
    r["arms"] = [{"name": "few", "mix": {"web": 0.98, "few": 0.02}}]
    r["report"] = {"baseline": "few"}
    path = write_recipe(tmp_path / "r.yaml", r)
    code, out = cli("run", path, "--only", "blend")
    assert code == 0, out
    plan = Plan.load(tmp_path / "runs" / "toy" / "plan.json")
    m = json.loads((plan.dir(plan.by_id("blend/few/seed1")) / "blend.json").read_text())
    assert abs({s["name"]: s["realised_share"] for s in m["sources"]}["few"] - 0.02) < 0.005


def test_group_cap_stratified_across_subtasks(suite_store):
    from harness.seeds.collect import allocate, collect

    # the allocation itself: equal shares with a small subtask's leftover passed on; proportional by size
    assert allocate({"a": 3, "b": 100, "c": 100}, 30, "equal") == {"a": 3, "b": 13, "c": 14}
    assert allocate({"a": 10, "b": 30, "c": 60}, 10, "proportional") == {"a": 1, "b": 3, "c": 6}
    assert allocate({"a": 5, "b": 6}, 100, "equal") == {"a": 5, "b": 6}
    plan = Plan.load(suite_store / "runs" / "toy" / "plan.json")
    suite = plan.by_id("suite")
    tasks_dir = plan.dir(suite) / plan.store.manifest("suite", suite.digest)["result"]["tasks"]
    seeds, counts = collect(str(tasks_dir), ["offline_seeded"], None, 0, per_group_cap=90)
    per = {t: c["seeds"] for t, c in counts["per_task"].items()}
    assert len(per) == 9 and set(per.values()) == {10} and counts["per_group"]["offline_seeded"]["seeds"] == 90
    assert len(seeds) == 90 and len({s["seed_id"] for s in seeds}) == 90
    _, prop = collect(str(tasks_dir), ["offline_seeded"], 5000, 0, per_group_cap=1000, stratify="proportional")
    per = {t: c["seeds"] for t, c in prop["per_task"].items()}
    sizes = {t: min(5000, c["train_docs"]) for t, c in prop["per_task"].items()}
    assert sum(per.values()) == 1000 and per["offline_arc_challenge"] < per["offline_arc_easy"] < per["offline_boolq"]
    assert all(abs(per[t] - 1000 * sizes[t] / sum(sizes.values())) < 1 for t in per), "proportional to capped sizes"
    # the same task capped on its own is unaffected by the group cap; per-task caps still hold inside a group
    _, alone = collect(str(tasks_dir), ["offline_arc_easy"], 7, 0, per_group_cap=3)
    assert alone["per_task"]["offline_arc_easy"]["seeds"] == 7


def test_categories_draw_their_own_budgets(suite_store, tmp_path, cli):
    """Knowledge- and reasoning-intensive tasks pooled with budgets of their own, stratified within each; the
    recipe refuses tasks beside categories and a task in two categories."""
    from harness.seeds.collect import collect

    plan = Plan.load(suite_store / "runs" / "toy" / "plan.json")
    suite = plan.by_id("suite")
    tasks_dir = plan.dir(suite) / plan.store.manifest("suite", suite.digest)["result"]["tasks"]
    cats = {"knowledge": {"tasks": ["offline_arc_easy", "offline_arc_challenge", "offline_openbookqa"], "seeds": 60},
            "reasoning": {"tasks": ["offline_hellaswag", "offline_piqa"], "seeds": 41, "stratify": "proportional"}}
    seeds, counts = collect(str(tasks_dir), [t for c in cats.values() for t in c["tasks"]], None, 0,
                            categories=cats)
    per = {t: c["seeds"] for t, c in counts["per_task"].items()}
    assert per["offline_arc_easy"] == per["offline_arc_challenge"] == per["offline_openbookqa"] == 20
    train = {t: c["train_docs"] for t, c in counts["per_task"].items()}
    assert per["offline_hellaswag"] + per["offline_piqa"] == 41
    assert abs(per["offline_hellaswag"] - 41 * train["offline_hellaswag"] /
               (train["offline_hellaswag"] + train["offline_piqa"])) < 1
    assert counts["per_category"] == {"knowledge": {"budget": 60, "tasks": 3, "seeds": 60},
                                      "reasoning": {"budget": 41, "tasks": 2, "seeds": 41}}
    assert {s["category"] for s in seeds if s["task"] == "offline_piqa"} == {"reasoning"}

    r = base_recipe(tmp_path)
    r["synthetic"] = {"sq": {"kind": "seed_render", "tasks": ["offline_arc_easy"],
                             "categories": {"a": {"tasks": ["offline_piqa"]}, "b": {"tasks": ["offline_piqa"]}}}}
    r["arms"].append({"name": "sq", "mix": {"web": 0.9, "sq": 0.1}})
    code, out = cli("plan", write_recipe(tmp_path / "c.yaml", r))
    assert code != 0 and "synthetic.sq.categories" in out and "not both" in out
    assert "'offline_piqa' is also in category 'a'" in out


def test_synthetic_sets_too_small_for_their_share_are_refused_before_generation(suite_store, tmp_path, cli):
    """requests x tokens_per_request against the largest share within data.max_epochs: the unseeded control at
    validation (its request count is in the recipe), a task-seeded set once its seeds are counted (the seeds stage,
    on a CPU, before any generation job starts)."""
    r = base_recipe(tmp_path, store=str(suite_store / "runs"), experiment="estimate")
    r["corpora"]["prose"] = {"paths": ["corpora/web.jsonl"]}
    r["synthetic"] = {"uqa": {"kind": "unseeded_qa", "context_corpus": "prose", "passages": 50,
                              "samples_per_seed": 1, "tokens_per_request": 100},
                      "tsqa": {"kind": "task_seeded", "tasks": ["offline_arc_easy"], "per_task_cap": 10,
                               "samples_per_seed": 2, "tokens_per_request": 100}}
    r["arms"] += [{"name": "u_small", "mix": {"web": 0.9, "uqa": 0.1}},
                  {"name": "u_big", "mix": {"web": 0.7, "uqa": 0.3}},
                  {"name": "t_big", "mix": {"web": 0.6, "tsqa": 0.4}}]
    # 50 x 100 = 5,000 tokens; u_big wants 0.3 x 40,000 = 12,000 within 4 epochs: fits (2.4 epochs)
    code, out = cli("validate", write_recipe(tmp_path / "ok.yaml", r))
    assert code == 0, out
    r["synthetic"]["uqa"]["passages"] = 20  # 2,000 tokens: 6 epochs
    code, out = cli("validate", write_recipe(tmp_path / "small.yaml", r))
    assert code == 2 and "synthetic.uqa" in out and "arm 'u_big' takes 0.3" in out and "6.0 epochs" in out, out
    r["synthetic"]["uqa"]["passages"] = 50
    # 10 seeds x 2 samples x 100 = 2,000 tokens for 0.4 x 40,000 = 16,000: 8 epochs, refused by the seeds stage
    path = write_recipe(tmp_path / "seeded.yaml", r)
    code, out = cli("validate", path)
    assert code == 0, out
    code, out = cli("run", path, "--only", "seeds/tsqa")
    assert code != 0 and "arm 't_big' takes 0.4" in out and "8.0 epochs" in out and "before the generation" in out
    plan = Plan.load(suite_store / "runs" / "estimate" / "plan.json")
    assert not plan.is_cached(plan.by_id("seeds/tsqa"))
    r["synthetic"]["tsqa"]["tokens_per_request"] = 500  # 10,000 tokens: 1.6 epochs
    code, out = cli("run", write_recipe(tmp_path / "seeded2.yaml", r), "--only", "seeds/tsqa")
    assert code == 0, out


SMOLLM2 = models.MODELS / "smollm2-135m-instruct"


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="run `harness assets` (make setup) first")
def test_hf_tokenizer_in_a_recipe(tmp_path, cli):
    """tokenizer.kind: hf - the recipe's tokenize stage encodes with the given folder's tokenizer: megatron.core
    reads back, per document, transformers' AutoTokenizer ids of the document followed by the EOD the recipe names
    (here the instruct model's <|im_end|>, not the default <|endoftext|>)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    r = base_recipe(tmp_path, tokenizer={"kind": "hf", "path": str(SMOLLM2), "eod_token": "<|im_end|>"})
    write_jsonl(tmp_path / "corpora" / "qa.jsonl", make_docs(300, seed=2, mean_words=60) + [
        "Café naïve façade — “quoted” 東京 🙂", "  leading spaces,\ttabs\nand\r\nline breaks  ", "x" * 3000])
    path = write_recipe(tmp_path / "r.yaml", r)
    code, out = cli("run", path, "--only", "tokenize/qa")
    assert code == 0 and "2 ran" in out, out
    plan = Plan.load(tmp_path / "runs" / "toy" / "plan.json")
    tok_result = plan.store.manifest("tokenizer", plan.by_id("tokenizer").digest)["result"]
    hf = AutoTokenizer.from_pretrained(SMOLLM2)
    eod = hf.convert_tokens_to_ids("<|im_end|>")
    docs = [json.loads(l)["text"] for l in (tmp_path / "corpora" / "qa.jsonl").read_text().splitlines()]
    want = [ids + [eod] for ids in hf(docs)["input_ids"]]
    ds = IndexedDataset(str(plan.dir(plan.by_id("tokenize/qa")) / "tokens"))
    assert ds.index.dtype == np.uint16 and len(ds) == len(docs) == 303
    got = [ds[i].tolist() for i in range(len(ds))]
    assert got[-3:] == want[-3:] and got == want
    assert (tok_result["eod_token"], tok_result["eod_id"], tok_result["vocab_size"]) == ("<|im_end|>", eod, len(hf))
