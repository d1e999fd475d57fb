"""A whole small ablation through the local executor: tokenizer, tokenize, blend, train (2 arms x 2 seeds),
export, lm-eval on the offline suite, report; W&B in offline mode."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import base_recipe, write_recipe
from harness.plan import Plan


PLANTED = [0, 1, 2, 3, 4, 500]  # SciQ validation items pasted into the `qa` corpus (the first 30 are evaluated)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, suite_store):
    tmp = tmp_path_factory.mktemp("e2e")
    sciq = Plan.load(suite_store / "runs" / "toy" / "plan.json")
    sciq = [json.loads(l) for l in (sciq.dir(sciq.by_id("suite")) / "suite" / "data" / "sciq" / "validation.jsonl")
            .read_text().splitlines()]
    r = base_recipe(tmp, seeds=[1, 2], decontamination={"corpus_report": True},
                    train={"micro_batch_size": 4, "global_batch_size": 8, "lr": 3e-3, "min_lr": 3e-4,
                           "eval_interval": 20, "eval_samples": 8, "save_interval": 1000},
                    eval={"suite": "offline", "tasks": ["offline_arc_easy", "offline_sciq", "offline_arithmetic"],
                          "limit": 30},
                    report={"baseline": "base"}, wandb={"mode": "offline", "project": "test"})
    r["data"].update(tokens=25_600, seq_length=128)
    r["tokenizer"]["vocab_size"] = 2000
    with open(tmp / "corpora" / "qa.jsonl", "a") as f:
        for i in PLANTED:
            item = sciq[i]
            f.write(json.dumps({"text": f"{item['query']} {item['choices'][item['gold']]}"}) + "\n")
    path = write_recipe(tmp / "r.yaml", r)
    res = subprocess.run([sys.executable, "-m", "harness", "run", str(path)], capture_output=True, text=True,
                         env={**__import__("os").environ, "WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stderr[-4000:]
    return tmp, path


def test_every_stage_published_and_rerun_does_nothing(ablation, cli):
    tmp, path = ablation
    plan = Plan.load(tmp / "runs" / "toy" / "plan.json")
    assert all(plan.is_cached(s) for s in plan.stages)
    code, out = cli("run", path)
    assert code == 0 and "nothing to run" in out


def test_eval_results_and_samples(ablation):
    tmp, _ = ablation
    plan = Plan.load(tmp / "runs" / "toy" / "plan.json")
    spec = plan.by_id("eval/mixed/seed2")
    m = plan.store.manifest(spec.kind, spec.digest)["result"]
    assert set(m["tasks"]) == {"offline_arc_easy", "offline_sciq", "offline_arithmetic"}
    assert all(t["n"] == 30 for t in m["tasks"].values())
    assert m["tasks"]["offline_arithmetic"]["primary"] == "exact_match" and m["tasks"]["offline_sciq"]["primary"] == "acc"
    gen = [json.loads(l) for l in (plan.dir(spec) / "samples" / "offline_arithmetic.jsonl").read_text().splitlines()]
    assert len(gen) == 30 and all(r["gold_bpb"] > 0 and r["score"] == r["exact_match"] and "response" in r
                                  for r in gen)
    rows = [json.loads(l) for l in (plan.dir(spec) / "samples" / "offline_sciq.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and all(len(r["loglik"]) == 4 and r["gold_bpb"] > 0 for r in rows)
    # acc is the argmax of the log-likelihoods, as lm-eval computes it
    assert all(r["acc"] == float(max(range(4), key=lambda i: r["loglik"][i]) == r["gold"]) for r in rows)
    lm = json.loads((plan.dir(spec) / "lm_eval_results.json").read_text())
    assert "offline_sciq" in lm["results"] and lm["versions"]["offline_sciq"] == 1.0


def test_report_tables_csv_latex_plots(ablation, cli):
    tmp, path = ablation
    code, out = cli("report", "toy", "--store", tmp / "runs")
    assert code == 0, out
    rep = tmp / "runs" / "toy" / "report"
    # multiple choice beside a generative task: one table of each task's own metric, with intervals
    md = (rep / "score_vs_base.md").read_text()
    assert "| base (reference) |" in md and "| mixed |" in md and "[" in md
    assert "held_out" in md and "generative" in md and "average" in md
    assert "acc: arc_easy, sciq; exact_match: arithmetic" in md
    assert not (rep / "acc_vs_base.md").exists() and not (rep / "exact_match_vs_base.md").exists()
    assert "arithmetic" not in (rep / "acc_norm_vs_base.md").read_text()  # a metric only some tasks have
    assert "arithmetic" in (rep / "gold_bpb_vs_base.md").read_text()
    tex = (rep / "acc_norm_vs_base.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\bottomrule" in tex
    results = json.loads((rep / "results.json").read_text())
    assert results["metrics"] == ["score", "acc_norm", "gold_bpb"]
    d = results["comparisons"]["score_vs_base"]["mixed"]["average"]
    assert d["low"] <= d["delta"] <= d["high"]
    plan = Plan.load(tmp / "runs" / "toy" / "plan.json")
    for arm in ("base", "mixed"):  # the table's values are the per-item records' means over items and seeds
        per_seed = [[json.loads(l) for l in (plan.dir(plan.by_id(f"eval/{arm}/seed{s}")) / "samples" /
                                             "offline_arithmetic.jsonl").read_text().splitlines()] for s in (1, 2)]
        assert results["values"]["gold_bpb"][arm]["offline_arithmetic"] == pytest.approx(
            np.mean([[r["gold_bpb"] for r in recs] for recs in per_seed]))
        assert results["values"]["score"][arm]["average"] == pytest.approx(np.mean(
            [results["values"]["score"][arm][t] for t in ("offline_arc_easy", "offline_sciq", "offline_arithmetic")]))
    assert (rep / "metric_vs_share.png").stat().st_size > 1000 and (rep / "training_loss.png").stat().st_size > 1000
    csv_text = (rep / "comparisons.csv").read_text()
    assert csv_text.startswith("metric,arm,reference,task") and "gold_bpb,mixed,base,sciq" in csv_text
    tokens = results["tokens"]["mixed"]
    assert abs(tokens["qa"]["share"] - 0.3) < 0.05
    # beside the tokens seen: the source's unique tokens and the epochs they imply (from the blend)
    assert tokens["qa"]["unique"] > 0 and abs(tokens["qa"]["epochs"] - 0.3 * 25_600 / tokens["qa"]["unique"]) < 0.01
    assert f"{tokens['qa']['unique']:,} unique, {tokens['qa']['epochs']:.2f} epochs" in (rep / "tokens.md").read_text()
    # contamination beside the scores: the planted SciQ items that were evaluated, per arm; all six per source
    con = results["contamination"]
    assert con["arms"]["mixed"]["offline_sciq"] == {"matched": 5, "evaluated": 30, "unchecked": []}
    assert con["arms"]["base"]["offline_sciq"]["matched"] == 0 and con["arms"]["mixed"]["offline_arc_easy"] == \
        {"matched": 0, "evaluated": 30, "unchecked": []}
    assert con["sources"]["qa"]["matched"]["sciq"] == 6 and con["sources"]["web"]["matched"] == {}
    report = (rep / "report.md").read_text()
    assert "| mixed | 0/30 | 0/30 | 5/30 | -" in report and "eval items matched: sciq 6 (6 documents)" in report
    # decision statistics: the clean items leave out the five planted SciQ items, for every arm alike
    dec = results["decisions"]
    assert (dec["clean_items"], dec["items"]) == (85, 90)
    vs = dec["score"]["vs"]["base"]
    assert vs["clean"]["mixed"]["items"] == 85 and vs["clean"]["mixed"]["low"] <= vs["clean"]["mixed"]["delta"]
    sure = vs["arms"]["mixed"]["sureness"]["average"]
    assert sure["seeds"] == [2, 2] and sure["estimable"] and sure["mde"] > 0
    assert sure["delta"] == pytest.approx(d["delta"])
    assert set(dec["score"]["snr"]) == {"offline_arc_easy", "offline_sciq", "offline_arithmetic"}
    assert "## Decision statistics" in report and "clean items: delta" in report and "(85 of 90)" in report
    per_task = {(r["metric"], r["task"]): r for r in __import__("csv").DictReader(open(rep / "decisions.csv"))
                if r["arm"] == "mixed" and r["reference"] == "base"}
    assert float(per_task[("score", "sciq")]["delta"]) == pytest.approx(
        results["comparisons"]["score_vs_base"]["mixed"]["offline_sciq"]["delta"])
    assert {t for m, t in per_task if m == "gold_bpb"} >= {"sciq", "arc_easy", "arithmetic", "average"}
    # one curve (qa, raised to 30% over the baseline's 0%): a line through two shares, no best share named
    fit = results["sweeps"]["qa"]["fits"]["score"]
    assert [p["arm"] for p in results["sweeps"]["qa"]["points"]] == ["base", "mixed"]
    assert fit["model"] == "linear" and fit["best"] is None and "not identified" in report
    code, out = cli("propose", "toy", "--store", tmp / "runs", "--count", "2")
    assert code == 0, out
    proposed = __import__("yaml").safe_load(out)["sweep"]
    assert proposed[0]["source"] == "qa" and proposed[0]["replaces"] == "web"
    assert len(proposed[0]["shares"]) == 2 and all(0 < x <= 0.6 for x in proposed[0]["shares"])
    # what it cost: every published stage's hours are paid once, split among the arms by the stated rule
    cost = results["costs"]
    assert sum(a["hours"] for a in cost["arms"].values()) == pytest.approx(
        sum(s["hours"] for s in cost["stages"].values()))
    assert cost["arms"]["base"]["by_work"]["training"]["hours"] == pytest.approx(
        sum(cost["stages"][f"{k}/base/seed{s}"]["hours"] for k in ("blend", "train") for s in (1, 2)))
    assert cost["stages"]["train/mixed/seed1"]["attempts"] == 1 and cost["stages"]["train/mixed/seed1"]["hours"] > 0
    st = cost["stages"]
    web = {a: results["tokens"][a]["web"]["tokens"] for a in ("base", "mixed")}
    common = sum(h["hours"] for sid, h in st.items() if sid.split("/")[0] in ("tokenizer", "suite", "decontam_index",
                                                                               "contamination"))
    assert cost["arms"]["mixed"]["by_work"]["data"]["hours"] == pytest.approx(
        st["tokenize/qa"]["hours"] + st["tokenize/web"]["hours"] * web["mixed"] / sum(web.values()) + common / 2)
    assert cost["arms"]["mixed"]["tokens_trained"] == 2 * 25_600 and "### what it cost" in report


def test_history_lists_what_was_tried(ablation, cli):
    tmp, path = ablation
    code, _ = cli("report", "toy", "--store", tmp / "runs")
    assert code == 0
    results = json.loads((tmp / "runs" / "toy" / "report" / "results.json").read_text())
    code, out = cli("history", "--store", tmp / "runs", "--json")
    assert code == 0, out
    rows = {r["arm"]: r for r in json.loads(out)}
    assert set(rows) == {"base", "mixed", "(sweep of qa)"}
    assert rows["mixed"]["mix"] == {"web": 0.7, "qa": 0.3} and rows["mixed"]["seeds"] == [1, 2]
    assert rows["mixed"]["delta"] == results["comparisons"]["score_vs_base"]["mixed"]["average"]
    assert rows["base"]["decision"] == "reference"
    assert rows["mixed"]["decision"] in ("better", "worse") or rows["mixed"]["decision"].startswith(
        "no difference detected (smallest detectable: ")
    code, out = cli("history", "--store", tmp / "runs", "--json", "--source", "qa", "--task", "sciq")
    rows = json.loads(out)
    assert code == 0 and [r["arm"] for r in rows] == ["mixed", "(sweep of qa)"]
    assert rows[0]["delta"] == results["comparisons"]["score_vs_base"]["mixed"]["offline_sciq"]
    code, out = cli("history", "--store", tmp / "runs", "--source", "qaa")
    assert code == 1 and "no arm in" in out and "trains on 'qaa' (sources: qa, web)" in out


def test_wandb_offline_runs_read_back(ablation, cli):
    """The offline runs, read back from their record logs (wandb's own protobuf definitions): one training run per
    arm and seed, named and grouped, its id the train stage's digest, with flat config (arm, seed, each source's
    share, model, budget) and its loss curve; one evaluation run per arm and seed with the same config and the
    scores (offline a run cannot be resumed, so the scores do not land on the training run); the report run names
    both runs of every arm and seed."""
    from wandb_records import read_run

    tmp, _ = ablation
    assert cli("report", "toy", "--store", tmp / "runs")[0] == 0
    plan = Plan.load(tmp / "runs" / "toy" / "plan.json")
    ids = {}
    for arm, share in (("base", {"web": 1.0, "qa": 0.0}), ("mixed", {"web": 0.7, "qa": 0.3})):
        for seed in (1, 2):
            spec = plan.by_id(f"train/{arm}/seed{seed}")
            [folder] = (plan.dir(spec) / "wandb").glob("offline-run-*")
            run = read_run(folder)
            assert (run["id"], run["name"], run["group"], run["job_type"]) == (spec.digest, f"{arm}-seed{seed}",
                                                                                "toy", "train")
            cfg = run["config"]
            assert (cfg["experiment"], cfg["arm"], cfg["seed"], cfg["model"], cfg["tokens"]) == \
                ("toy", arm, seed, "tiny", 25_600)
            assert {s: cfg[f"share.{s}"] for s in share} == share and cfg["synthetic_share"] == 0.0
            assert cfg["parameters"] > 0 and cfg["train.global_batch_size"] == 8 and cfg["shape.num_layers"] == 2
            assert not [k for k, v in cfg.items() if isinstance(v, list)], "W&B cannot filter inside a list"
            losses = [h["loss"] for h in run["history"] if "loss" in h]
            trained = [json.loads(l)["loss"] for l in (plan.dir(spec) / "metrics.jsonl").read_text().splitlines()]
            assert losses == pytest.approx(trained), "the curve is the metrics file's"
            ev = plan.by_id(f"eval/{arm}/seed{seed}")
            [folder] = (plan.dir(ev) / "wandb").glob("offline-run-*")
            erun = read_run(folder)
            assert (erun["name"], erun["job_type"], erun["config"]["arm"], erun["config"]["share.qa"]) == \
                (f"{arm}-seed{seed}", "eval", arm, share["qa"])
            scores = plan.store.manifest("eval", ev.digest)["result"]["tasks"]
            assert erun["summary"]["eval/offline_sciq/acc"] == scores["offline_sciq"]["acc"]
            assert erun["summary"]["eval/average/gold_bpb"] == pytest.approx(
                np.mean([scores[t]["gold_bpb"] for t in scores]))
            assert erun["summary"]["eval/offline_arithmetic/exact_match"] == scores["offline_arithmetic"]["exact_match"]
            ids[(arm, f"seed{seed}")] = (run["id"], erun["id"])
    folder = sorted((tmp / "runs" / "toy" / "report").glob("wandb/offline-run-*"))[-1]  # the newest report run
    rep = read_run(folder)
    assert rep["job_type"] == "report" and rep["config"]["baseline"] == "base"
    for (arm, seed), (train_id, eval_id) in ids.items():
        assert rep["config"][f"runs.{arm}.{seed}.train.id"] == train_id
        assert rep["config"][f"runs.{arm}.{seed}.eval.id"] == eval_id != train_id


def test_wandb_report_artifact_holds_the_report_files(ablation, cli):
    """The report run logs one artifact of type `report` whose manifest (read back from the offline run's
    ArtifactRecord) names every file of the report folder - report.md, results.json, the CSVs, the Markdown and
    LaTeX tables, the plots - each with the digest and size of the file on disk, and whose own digest is W&B's
    manifest digest over those entries."""
    import base64
    import hashlib

    from wandb_records import read_artifacts

    tmp, _ = ablation
    rep = tmp / "runs" / "toy" / "report"
    before = set(rep.glob("wandb/offline-run-*"))
    code, out = cli("report", "toy", "--store", tmp / "runs")
    assert code == 0, out
    [folder] = set(rep.glob("wandb/offline-run-*")) - before  # this report's run
    deadline = time.monotonic() + 60
    arts = read_artifacts(folder)
    while len(arts) < 4 and time.monotonic() < deadline:  # W&B's service may still be writing the run's log
        time.sleep(1)
        arts = read_artifacts(folder)
    run_id = folder.name.rsplit("-", 1)[1]
    assert sorted((a["type"], a["name"]) for a in arts if a["type"] != "report") == \
        [("run_table", f"run-{run_id}-{t}") for t in ("comparisons", "runs", "scores")]  # the logged tables
    [art] = [a for a in arts if a["type"] == "report"]
    assert (art["name"], art["manifest_file"]) == ("toy-report", "")  # entries in the record, not in a file
    files = {f.name: f.read_bytes() for f in rep.iterdir() if f.is_file()}
    assert {"report.md", "results.json", "comparisons.csv", "decisions.csv", "score_vs_base.md",
            "acc_norm_vs_base.tex", "tokens.md", "costs.md", "training_loss.png"} <= set(files)
    assert set(art["entries"]) == set(files), "the artifact holds the report folder's files, no more, no less"
    for name, entry in art["entries"].items():
        assert entry["size"] == len(files[name]), name
        assert entry["digest"] == base64.b64encode(hashlib.md5(files[name]).digest()).decode(), name
    assert json.loads(files["results.json"])["baseline"] == "base"
    assert art["digest_algorithm"] in ("", "MANIFEST_MD5"), art["digest_algorithm"]
    manifest = hashlib.md5(b"wandb-artifact-manifest-v1\n")
    for name in sorted(art["entries"]):
        manifest.update(f"{name}:{art['entries'][name]['digest']}\n".encode())
    assert art["digest"] == manifest.hexdigest()


def test_report_refuses_missing_evaluation(tmp_path, ablation, cli):
    tmp, path = ablation
    # a third arm that has not been run: the report must say so, not print a partial table
    r = json.loads(json.dumps(__import__("yaml").safe_load(path.read_text())))
    r["arms"].append({"name": "extra", "mix": {"web": 0.5, "qa": 0.5}})
    path2 = write_recipe(tmp / "r2.yaml", r)
    code, out = cli("run", path2, "--only", "blend/extra")
    assert code == 0, out
    code, out = cli("report", "toy", "--store", tmp / "runs")
    assert code == 2
    assert "arm 'extra' seed 1: no evaluation yet (stage eval/extra/seed1 has not run)" in " ".join(out.split())


BACKENDS = r"""
import json, sys, os
def main():
    import lm_eval, lm_eval.models
    import torch
    from harness.evaluation.megatron_lm import MegatronHarnessLM
    from lm_eval.tasks import TaskManager
    tasks_dir, hf_dir, train_dir, out = sys.argv[1:5]
    tm = TaskManager(include_path=tasks_dir, include_defaults=False)
    mg = MegatronHarnessLM(train_dir, batch_size=7)
    res, gen = {}, {}
    for name, model, args in (("hf", "hf", f"pretrained={hf_dir},dtype=float32"), ("megatron", mg, None)):
        r = lm_eval.simple_evaluate(model=model, model_args=args, tasks=["offline_arc_easy", "offline_winogrande",
                                   "offline_arithmetic"], task_manager=tm, limit=25, batch_size=7, log_samples=True,
                                   device="cpu")
        res[name] = {t: [[float(x[0]) for x in s["filtered_resps"]] for s in sorted(v, key=lambda s: s["doc_id"])]
                     for t, v in r["samples"].items() if t != "offline_arithmetic"}
        gen[name] = [(s["arguments"][0][0], s["resps"][0][0])
                     for s in sorted(r["samples"]["offline_arithmetic"], key=lambda s: s["doc_id"])]
    # where the backends' greedy responses differ: megatron's log-probability gap, at the first differing token,
    # between its own choice and hf's (a near-tie when tiny)
    gaps = []
    for (prompt, a), (_, b) in zip(gen["megatron"], gen["hf"]):
        if a == b:
            continue
        ctx = mg._encode(prompt)
        ta, tb = mg._encode(prompt + a)[len(ctx):], mg._encode(prompt + b)[len(ctx):]
        j = next((k for k, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        if j >= min(len(ta), len(tb)):
            gaps.append(None)  # one stopped earlier (a stop string or the end-of-document token)
            continue
        lp = mg._log_probs(mg._hidden([ctx + ta[:j]])[0, len(ctx) + j - 1:])[0]
        gaps.append(float(lp[ta[j]] - lp[tb[j]]))
    unbatched = [mg._generate_one(p, ["\n", ","], 12) for p, _ in gen["megatron"][:8]]
    json.dump({"lls": res, "gen": gen, "gaps": gaps, "unbatched": unbatched}, open(out, "w"))
if __name__ == "__main__":
    main()
"""


def test_megatron_backend_matches_hf_per_item(ablation, tmp_path):
    tmp, _ = ablation
    plan = Plan.load(tmp / "runs" / "toy" / "plan.json")
    suite = plan.dir(plan.by_id("suite")) / "suite" / "tasks"
    hf = plan.dir(plan.by_id("export/mixed/seed1")) / "hf"
    train = plan.dir(plan.by_id("train/mixed/seed1"))
    out = tmp_path / "lls.json"
    res = subprocess.run([sys.executable, "-c", BACKENDS, str(suite), str(hf), str(train), str(out)],
                         capture_output=True, text=True, env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    lls = got["lls"]
    # greedy generation (batched, KV-cached) equals hf's on the export except at near-ties: where they differ, the
    # first differing token's log-probabilities are within 1e-3 under megatron's model
    assert len(got["gen"]["megatron"]) == 25
    assert all(g is not None and g < 1e-3 for g in got["gaps"]), got["gaps"]
    assert len(got["gaps"]) <= 3, f"{len(got['gaps'])} of 25 responses differ"
    # and the cached, batched decoding equals recomputing every sequence whole, request by request
    assert got["unbatched"] == [r for _, r in got["gen"]["megatron"][:8]]
    n = 0
    for task, items in lls["hf"].items():
        for a, b in zip(items, lls["megatron"][task]):
            assert len(a) == len(b)
            for x, y in zip(a, b):
                assert abs(x - y) <= 1e-4, (task, x, y)
                n += 1
    assert n >= 25 * 4 + 25 * 2


def test_eval_benchmark_runs(ablation):
    """bench/eval.py once at its smallest size on the shared ablation's checkpoint and export (the smoke run of
    tests/test_benchmarks.py, here because it needs trained models): both kinds of task, both backends."""
    tmp, _ = ablation
    bench = Path(__file__).resolve().parent.parent / "bench" / "eval.py"
    res = subprocess.run([sys.executable, str(bench), "--store", str(tmp / "runs"), "--experiment", "toy",
                          "--arm", "mixed", "--limit", "4", "--repeat", "1", "--mc-tasks", "offline_sciq",
                          "--generative-tasks", "offline_arithmetic"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("ratio megatron_harness / hf") == 2, res.stdout
