"""Decision statistics and share sweeps against direct computations on data with known answers (report/decisions.py,
report/sweep.py), and `sweep:` in a recipe."""

import math

import numpy as np
import pytest
import yaml

from conftest import base_recipe, write_recipe
from harness import recipe as rcp
from harness.report import decisions, stats, sweep


def _arm(rng, items, seed_sd, noise_sd, seeds, shift=0.0):
    """Scores [seeds, items]: the items' difficulty, a per-seed offset and seed-by-item noise."""
    return items[None] + shift + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, noise_sd, (seeds, len(items)))


def test_variance_components_are_the_two_way_layout():
    rng = np.random.default_rng(0)
    x = _arm(rng, rng.normal(0, 1, 3000), 0.05, 0.2, 8)
    # direct: seeds' means with the n-1 correction; the residual mean square written out
    means = [row.mean() for row in x]
    assert decisions.seed_var(x) == pytest.approx(sum((m - np.mean(means)) ** 2 for m in means) / 7, rel=1e-12)
    s, n = x.shape
    direct = sum((x[i, j] - x[i].mean() - x[:, j].mean() + x.mean()) ** 2 for i in range(s) for j in range(0, n, 1))
    assert decisions.resid_var(x) == pytest.approx(direct / ((s - 1) * (n - 1)), rel=1e-9)
    assert decisions.resid_var(x) == pytest.approx(0.2 ** 2, rel=0.05)  # the noise it was made with
    assert decisions.seed_var(x[:1]) is None and decisions.resid_var(x[:1]) is None


def test_the_item_term_leaves_out_the_seed_by_item_noise():
    """var(d_i) holds the arms' item-level difference (what more seeds cannot remove) and each arm's seed-by-item
    noise over its seeds (what they can): the item term is the first alone."""
    rng = np.random.default_rng(13)
    n, tau, noise = 4000, 0.1, 0.3
    items = rng.normal(0, 1, n)
    a = _arm(rng, items + rng.normal(0, tau, n), 0.02, noise, 3)
    b = _arm(rng, items, 0.02, noise, 3)
    assert decisions.item_var(a, b) * n == pytest.approx(tau ** 2, rel=0.2)
    d = a.mean(axis=0) - b.mean(axis=0)
    assert d.var(ddof=1) == pytest.approx(tau ** 2 + 2 * noise ** 2 / 3, rel=0.1)  # what the correction removes


def test_standard_error_matches_the_bootstrap_and_the_smallest_detectable_effect_is_2_8_of_it():
    rng = np.random.default_rng(1)
    items = rng.normal(0, 1, 400)
    a = {"t": _arm(rng, items, 0.08, 0.3, 3, shift=0.02)}
    b = {"t": _arm(rng, items, 0.08, 0.3, 3)}
    s = decisions.compare(a, b, {})["average"]
    boot = stats.compare(a, b, n_boot=6000, seed=2)[-1]
    assert s.se == pytest.approx((boot.high - boot.low) / (2 * 1.96), rel=0.2)
    assert s.mde == pytest.approx(2.8016 * s.se, rel=1e-3)
    assert s.seeds == (3, 3) and s.estimable and s.seed_sd[0] == pytest.approx(a["t"].mean(axis=1).std(ddof=1))


def test_seeds_for_significance_is_the_smallest_count_that_clears_the_threshold():
    va, vb, item = 0.004, 0.006, 0.0001
    ma, mb = np.array([0.0, math.sqrt(2 * va)]), np.array([0.0, math.sqrt(2 * vb)])  # var(ddof=1) = va, vb
    s = decisions.sureness("t", 0.03, ma, mb, item)
    assert s.seeds_for_significance is not None
    clears = [n for n in range(1, 500) if 0.03 >= 1.959964 * math.sqrt(item + (va + vb) / n)]
    assert s.seeds_for_significance == clears[0] and not s.enough_now
    assert decisions.verdict(s.to_dict()) == f"{clears[0]} per arm"
    # an effect inside the item noise: no number of seeds detects it, and the report says so
    never = decisions.sureness("t", 0.015, ma, mb, 0.0001)
    assert 0.015 / 1.959964 < math.sqrt(0.0001) and never.seeds_for_significance is None
    assert decisions.verdict(never.to_dict()).startswith("none would do: item noise dominates")
    # one seed: the seed noise is not estimable, and no count is claimed
    one = decisions.sureness("t", 0.03, ma[:1], mb[:1], item)
    assert not one.estimable and one.seeds_for_significance is None and one.seed_sd == (None, None)
    # against a fixed model (a continuation's base) only the arm's seeds count
    fixed = decisions.sureness("t", 0.03, ma, None, item)
    assert fixed.se == pytest.approx(math.sqrt(item + va / 2)) and fixed.seeds == (2, 0)


def test_group_terms_sum_item_noise_and_share_the_seeds():
    rng = np.random.default_rng(3)
    a = {t: _arm(rng, rng.normal(0, 1, 200), 0.05, 0.3, 3) for t in ("t1", "t2")}
    b = {t: _arm(rng, rng.normal(0, 1, 200), 0.05, 0.3, 3) for t in ("t1", "t2")}
    b = {t: a[t] * 0 + b[t] for t in b}
    out = decisions.compare(a, b, {"g": ["t1", "t2"]})
    assert out["g"].item_var == pytest.approx((out["t1"].item_var + out["t2"].item_var) / 4)
    seed_avg = (a["t1"].mean(axis=1) + a["t2"].mean(axis=1)) / 2
    assert out["average"].seed_sd[0] == pytest.approx(seed_avg.std(ddof=1))
    assert out["average"].delta == pytest.approx(np.mean([a[t].mean() - b[t].mean() for t in a]))


def test_signal_to_noise_flags_tasks_whose_arms_differ_by_noise_alone():
    rng = np.random.default_rng(4)
    items = {"flat": rng.normal(0, 1, 300), "steep": rng.normal(0, 1, 300)}
    arms = {f"a{k}": {"flat": _arm(rng, items["flat"], 0.05, 0.2, 3),
                      "steep": _arm(rng, items["steep"], 0.05, 0.2, 3, shift=0.3 * k)} for k in range(4)}
    snr = decisions.signal_to_noise(arms)
    assert snr["flat"]["low"] and not snr["steep"]["low"] and snr["steep"]["snr"] > 10
    means = [arms[n]["steep"].mean() for n in arms]
    noise = math.sqrt(np.mean([arms[n]["steep"].mean(axis=1).var(ddof=1) for n in arms]) / 3)
    assert snr["steep"]["snr"] == pytest.approx(np.std(means, ddof=1) / noise)
    md = decisions.snr_table("x", 100.0, snr, str)
    assert "Low signal at this scale (SNR < 2): flat." in md


def _sweep_scores(rng, shares, f, seeds=3, n=400):
    """Arms whose average follows f(share), two tasks, seed and item noise."""
    items = {t: rng.normal(0, 0.2, n) for t in ("t1", "t2")}
    return {f"s{k}": {t: _arm(rng, items[t], 0.004, 0.05, seeds, shift=f(s)) for t in items}
            for k, s in enumerate(shares)}


def _fit(scores, shares, higher=True, upto=None):
    names = list(scores)
    point, reps = sweep.replicates(scores, names, 1000, seed=5)
    assert np.allclose(point, [np.mean([x.mean() for x in scores[n].values()]) for n in names])
    return {**sweep.fit(np.array(shares), point, reps, higher, upto=upto), "values": point}


def test_a_concave_response_names_its_optimum_with_an_interval():
    rng = np.random.default_rng(6)
    shares = [0.0, 0.05, 0.1, 0.15, 0.2]
    f = _fit(_sweep_scores(rng, shares, lambda s: 0.8 * s - 4 * s * s), shares)
    assert f["model"] == "quadratic" and f["best"] == pytest.approx(0.1, abs=0.01)
    assert f["best_low"] <= 0.1 <= f["best_high"] and f["best_high"] - f["best_low"] < 0.05
    # the fit is least squares over the arms' means: the same coefficients as numpy's polynomial fit
    assert np.allclose(f["coef"], np.polyfit(shares, f["values"], 2)[::-1])
    # lower is better (bits per byte): the minimum of the mirrored curve
    g = _fit(_sweep_scores(rng, shares, lambda s: -0.8 * s + 4 * s * s), shares, higher=False)
    assert g["best"] == pytest.approx(0.1, abs=0.01)


def test_a_monotone_response_or_two_shares_identify_nothing():
    rng = np.random.default_rng(7)
    shares = [0.0, 0.1, 0.2, 0.3]
    up = _fit(_sweep_scores(rng, shares, lambda s: 0.3 * s), shares)
    assert up["best"] is None and "a larger share might do better" in up["not_identified"]
    down = _fit(_sweep_scores(rng, shares, lambda s: -0.3 * s), shares)
    assert down["best"] is None and "no tested share beats the baseline" in down["not_identified"]
    two = _fit(_sweep_scores(rng, [0.0, 0.1], lambda s: 0.3 * s), [0.0, 0.1])
    assert two["model"] == "linear" and two["best"] is None and "test at least 3" in two["not_identified"]


def test_proposals_go_where_the_band_is_widest_within_the_allowed_repetition():
    rng = np.random.default_rng(8)
    shares = [0.0, 0.1, 0.2, 0.3]
    f = _fit(_sweep_scores(rng, shares, lambda s: 0.3 * s), shares, upto=0.45)
    width = np.array(f["band_high"]) - np.array(f["band_low"])
    grid = np.array(f["grid"])
    picks = sweep.propose(f, 2, allowed=0.45, tested=shares)
    assert len(picks) == 2 and all(0 < p <= 0.45 for p in picks)
    assert all(min(abs(p - t) for t in shares) >= 0.03 - 1e-9 for p in picks) and abs(picks[0] - picks[1]) >= 0.03
    # the first pick is the widest point of the band among the allowed, spaced shares
    ok = [(w, s) for w, s in zip(width, grid) if 0 < s <= 0.45 and min(abs(s - t) for t in shares) >= 0.03]
    assert round(max(ok)[1], 4) in picks
    assert max(sweep.propose(f, 3, allowed=0.31, tested=shares)) <= 0.31 + 1e-9


def test_curves_keep_sources_apart():
    arms = [{"name": "baseline", "mix": {"sotu": 1.0}}, {"name": "seedqa_10", "mix": {"sotu": 0.9, "seedqa": 0.1}},
            {"name": "taskqa_2", "mix": {"sotu": 0.98, "taskqa": 0.02}},
            {"name": "taskqa_1", "mix": {"sotu": 0.99, "taskqa": 0.01}},
            {"name": "both", "mix": {"sotu": 0.9, "taskqa": 0.05, "seedqa": 0.05}}]
    c = sweep.curves(arms, "baseline")
    assert c == {"seedqa": [("baseline", 0.0), ("seedqa_10", pytest.approx(0.1))],
                 "taskqa": [("baseline", 0.0), ("taskqa_1", pytest.approx(0.01)), ("taskqa_2", pytest.approx(0.02))]}


def test_a_sweep_in_a_recipe_becomes_arms(tmp_path, cli):
    r = base_recipe(tmp_path, sweep=[{"source": "qa", "shares": [0.1, 0.25, 0.5]}])
    path = write_recipe(tmp_path / "r.yaml", r)
    loaded = rcp.load(path)
    mixes = {a.name: dict(a.mix) for a in loaded.arms}
    assert mixes["qa_10"] == {"web": 0.9, "qa": 0.1} and mixes["qa_50"] == {"web": 0.5, "qa": 0.5}
    assert list(mixes) == ["base", "mixed", "qa_10", "qa_25", "qa_50"]
    # a saved recipe (sweep and its arms) loads again to the same arms
    saved = yaml.safe_load(rcp.to_yaml(loaded))
    saved.pop("source")
    saved = write_recipe(tmp_path / "saved.yaml", saved)
    assert [a.name for a in rcp.load(saved).arms] == list(mixes)
    code, out = cli("plan", path, "--store", tmp_path / "store")
    assert code == 0 and "train/qa_25/seed1" in out


@pytest.mark.parametrize("entry,message", [
    ({"source": "qaa", "shares": [0.1]}, "sweep[0].source: unknown source 'qaa' (did you mean 'qa'?)"),
    ({"source": "qa", "shares": [0.1, 1.5]}, "sweep[0].shares: 1.5: a share must be in (0, 1]"),
    ({"source": "qa", "shares": [0.3]}, "arm 'qa_30' exists with another mix"),
    ({"source": "web", "shares": [0.1], "replaces": "web"}, "is the swept source itself"),
    ({"source": "qa", "shares": [0.1], "replaces": "qa"}, "'qa' is not in the baseline's mix (web)"),
])
def test_bad_sweeps_are_refused_by_key(tmp_path, cli, entry, message):
    r = base_recipe(tmp_path, sweep=[entry])
    r["arms"].append({"name": "qa_30", "mix": {"web": 0.6, "qa": 0.4}})
    code, out = cli("validate", write_recipe(tmp_path / "r.yaml", r))
    assert code == 2 and message in out, out


def test_rank_agreement_against_scipy_and_by_hand():
    from scipy.stats import kendalltau

    from harness.report import scales

    rng = np.random.default_rng(9)
    x, y = rng.normal(size=7), rng.normal(size=7)
    assert scales.tau(x, y) == pytest.approx(kendalltau(x, y).statistic)  # no ties: tau-a is tau-b
    small, large = np.array([0.1, 0.3, 0.2, 0.4]), np.array([0.1, 0.2, 0.3, 0.4])
    # six pairs, the large scale orders all; the small one swaps arms 1 and 2 only
    assert scales.decision_accuracy(small, large) == pytest.approx(5 / 6)
    assert scales.tau(small, large) == pytest.approx((5 - 1) / 6)
    # a tie at the large scale is no decision to agree with
    assert scales.decision_accuracy(small, np.array([0.1, 0.2, 0.2, 0.4])) == pytest.approx(5 / 5)


def test_agreement_across_scales_on_known_rankings():
    from harness.report import scales

    rng = np.random.default_rng(10)
    items = {"t": rng.normal(0, 0.2, 300)}
    arms = ["a", "b", "c", "d"]
    same = {sc: {a: {"t": _arm(rng, items["t"], 0.002, 0.05, 2, shift=0.1 * k)} for k, a in enumerate(arms)}
            for sc in ("s", "l")}
    ag = scales.agreement(same, arms, True, 500)
    v = ag["versus_largest"]["s"]
    assert v["tau"] == 1.0 and v["accuracy"] == 1.0 and v["tau_low"] == 1.0
    assert [r["arm"] for r in ag["rankings"]["l"]] == ["d", "c", "b", "a"]
    flipped = {"s": {a: {"t": _arm(rng, items["t"], 0.002, 0.05, 2, shift=-0.1 * k)} for k, a in enumerate(arms)},
               "l": same["l"]}
    v = scales.agreement(flipped, arms, True, 500)["versus_largest"]["s"]
    assert v["tau"] == -1.0 and v["accuracy"] == 0.0
    # arms that differ by noise alone: the interval spans most of [-1, 1]
    noise = {sc: {a: {"t": _arm(rng, items["t"], 0.002, 0.2, 2)} for a in arms} for sc in ("s", "l")}
    v = scales.agreement(noise, arms, True, 500)["versus_largest"]["s"]
    assert v["tau_high"] - v["tau_low"] >= 1.0


def test_scales_in_a_recipe_plan_every_arm_at_every_scale(tmp_path, cli):
    r = base_recipe(tmp_path, scales=[{"name": "s", "tokens": 20_000}, {"name": "m", "model": "20m"}])
    path = write_recipe(tmp_path / "r.yaml", r)
    code, out = cli("plan", path, "--store", tmp_path / "store")
    assert code == 0, out
    for sid in ("train/base.s/seed1", "train/mixed.m/seed1", "eval/mixed.s/seed1", "blend/base.m/seed1"):
        assert sid in out
    from harness.plan import build
    from harness.store import Store

    plan = build(rcp.load(path), Store(tmp_path / "store"))
    assert [s.id for s in plan.stages].count("tokenize/web") == 1  # the data stages are shared
    assert plan.by_id("blend/base.s/seed1").config["tokens"] == 20_000
    assert plan.by_id("blend/base.m/seed1").config["tokens"] == 40_000
    assert plan.by_id("train/base.m/seed1").config["model"]["num_layers"] == 8
    assert plan.by_id("train/base.s/seed1").config["model"]["num_layers"] == 2


@pytest.mark.parametrize("scales_,message", [
    ([{"name": "s"}], "one scale is no comparison"),
    ([{"name": "s", "model": "2om"}, {"name": "m"}], "scales[0].model: no model named '2om' (did you mean '20m'?)"),
    ([{"name": "s"}, {"name": "s", "tokens": 100}], "duplicate scale 's'"),
    ([{"name": "s"}, {"name": "m", "tokens": 90_000_000}], "scales[1] (m): "),
])
def test_bad_scales_are_refused_by_key(tmp_path, cli, scales_, message):
    code, out = cli("validate", write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path, scales=scales_)))
    assert code == 2 and message in out, out


def test_a_sweep_at_two_scales_end_to_end(tmp_path, cli):
    """Real stages at toy sizes: three arms (the baseline and a two-share sweep) at two scales, one seed; the report
    per scale, the agreement across scales, the fitted curve, the proposal and the history."""
    import json

    r = base_recipe(tmp_path, arms=[{"name": "base", "mix": {"web": 1.0}}],
                    synthetic={"sr": {"kind": "seed_render", "tasks": ["offline_arc_easy"], "per_task_cap": 40}},
                    sweep=[{"source": "qa", "shares": [0.1, 0.3]},
                           {"source": "sr", "knob": "per_task_cap", "values": [40, 120], "share": 0.1}],
                    scales=[{"name": "s", "tokens": 8_192}, {"name": "m", "tokens": 16_384}],
                    train={"micro_batch_size": 4, "global_batch_size": 8, "eval_interval": 100, "eval_samples": 8,
                           "save_interval": 1000},
                    eval={"suite": "offline", "tasks": ["offline_arc_easy"], "limit": 20})
    r["data"]["seq_length"], r["tokenizer"]["vocab_size"] = 128, 2000  # ARC's answers fit
    path = write_recipe(tmp_path / "r.yaml", r)
    code, out = cli("run", path)
    assert code == 0, out[-3000:]
    rep = tmp_path / "runs" / "toy" / "report"
    results = json.loads((rep / "results.json").read_text())
    assert results["scales"]["names"] == ["s", "m"] and results["baseline"] == "base.m"
    agree = results["scales"]["agreement"]["acc"]
    assert len(agree["rankings"]["m"]) == 5
    small = json.loads((rep / "scale-s" / "results.json").read_text())
    values = {a: small["values"]["acc"][f"{a}.s"]["average"] for a in ("base", "qa_10", "qa_30")}
    values_all = {a: small["values"]["acc"][f"{a}.s"]["average"] for a in agree["arms"]}
    assert {x["arm"]: x["value"] for x in agree["rankings"]["s"]} == pytest.approx(values_all)
    big = {a: results["values"]["acc"][f"{a}.m"]["average"] for a in values_all}
    assert agree["versus_largest"]["s"]["tau"] == pytest.approx(float(scales_tau(values_all, big)))
    report = (rep / "report.md").read_text()
    assert "## Does it hold at scale" in report and "scale-s/report.md" in report
    assert (rep / "scale-s" / "decisions.md").read_text().count("not estimable (one seed)") >= 2
    fit = results["sweeps"]["qa"]["fits"]["acc"]
    assert fit["model"] == "quadratic" and [p["arm"] for p in results["sweeps"]["qa"]["points"]] == \
        ["base.m", "qa_10.m", "qa_30.m"]
    # the knob swept at one share: a curve of its own over the knob's values, each point its own set's repetition
    knob = results["sweeps"]["sr:per_task_cap"]
    assert [(p["arm"], p["value"]) for p in knob["points"]] == [("sr_per_task_cap40.m", 40), ("sr_per_task_cap120.m",
                                                                                             120)]
    assert knob["points"][0]["epochs"] > 2 * knob["points"][1]["epochs"] > 0
    assert "2 per_task_cap values: a line" in knob["fits"]["acc"]["not_identified"]
    assert (rep / "scale-m" / "metric_vs_sr_per_task_cap.png").stat().st_size > 1000
    code, out = cli("propose", "toy", "--store", tmp_path / "runs")
    proposed = {e["source"]: e for e in yaml.safe_load(out)["sweep"]}
    assert code == 0 and set(proposed) == {"qa", "sr"}, out
    assert proposed["sr"]["knob"] == "per_task_cap" and proposed["sr"]["share"] == 0.1
    assert all(isinstance(v, int) and 40 < v <= 240 for v in proposed["sr"]["values"])
    code, out = cli("history", "--store", tmp_path / "runs", "--json")
    rows = json.loads(out)
    srow = next(x for x in rows if x["arm"] == "qa_30" and x["scale"] == "s")  # each scale's own report
    assert srow["delta"] == small["comparisons"]["acc_vs_base.s"]["qa_30.s"]["average"]
    assert {(x["arm"], x["scale"]) for x in rows if x["scale"]} == \
        {(a, s) for a in list(values) + ["sr_per_task_cap40", "sr_per_task_cap120"] for s in ("s", "m")}


def scales_tau(x: dict, y: dict) -> float:
    """Kendall's tau-a by hand: concordant minus discordant pairs over all pairs (ties count 0)."""
    arms = list(x)
    pairs = [(a, b) for i, a in enumerate(arms) for b in arms[i + 1:]]
    sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
    return sum(sign(x[a] - x[b]) * sign(y[a] - y[b]) for a, b in pairs) / len(pairs)


def test_a_knob_sweep_copies_its_set_per_value(tmp_path):
    syn = {"sr": {"kind": "seed_render", "tasks": ["offline_arc_easy"], "per_task_cap": 40}}
    r = base_recipe(tmp_path, synthetic=syn,
                    sweep=[{"source": "sr", "knob": "per_task_cap", "values": [40, 80], "share": 0.05}])
    loaded = rcp.load(write_recipe(tmp_path / "r.yaml", r), check_files=False)
    assert loaded.synthetic["sr_per_task_cap80"].per_task_cap == 80
    assert loaded.synthetic["sr_per_task_cap40"].tasks == ["offline_arc_easy"]
    assert {a.name: dict(a.mix) for a in loaded.arms}["sr_per_task_cap80"] == {"web": 0.95, "sr_per_task_cap80": 0.05}
    assert "samples_per_seed" in sweep.knobs() and sweep.knobs()["context_share"] is float


@pytest.mark.parametrize("entry,message", [
    ({"source": "qa", "knob": "per_task_cap", "values": [1, 2], "share": 0.1}, "'qa' is a corpus"),
    ({"source": "sr", "knob": "per_task_cp", "values": [1, 2], "share": 0.1}, "(did you mean 'per_task_cap'?)"),
    ({"source": "sr", "knob": "per_task_cap", "values": [10, 2.5], "share": 0.1}, "per_task_cap is a whole number"),
    ({"source": "sr", "knob": "per_task_cap", "values": [10, 20]},
     "sweep[0].share: None: a knob sweep needs one share"),
    ({"source": "sr", "knob": "per_task_cap", "values": [10], "share": 0.1}, "at least two distinct values"),
])
def test_bad_knob_sweeps_are_refused_by_key(tmp_path, cli, entry, message):
    syn = {"sr": {"kind": "seed_render", "tasks": ["offline_arc_easy"]}}
    code, out = cli("validate", write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path, synthetic=syn, sweep=[entry])))
    assert code == 2 and message in out, out


def test_a_knob_curve_names_its_edges_and_proposes_whole_numbers():
    rng = np.random.default_rng(12)
    values = [1.0, 2.0, 4.0]
    scores = _sweep_scores(rng, values, lambda v: -0.05 * v)
    point, reps = sweep.replicates(scores, list(scores), 300)
    f = sweep.fit(np.array(values), point, reps, True, upto=8.0, what="samples_per_seed")
    assert f["best"] is None and "the smallest samples_per_seed tested is best" in f["not_identified"]
    assert f["grid"][0] == 1.0
    picks = sweep.propose(f, 2, allowed=1.0e9, tested=values, integer=True)
    assert all(isinstance(p, int) and 1 < p <= 8 and p not in values for p in picks)


def test_noise_alone_never_names_a_best_share():
    """Arms that differ by noise alone often give a quadratic with an interior vertex; the bend test refuses it."""
    shares = [0.0, 0.1, 0.2, 0.3]
    named = []
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        f = _fit(_sweep_scores(rng, shares, lambda s: 0.0, n=100), shares)
        named.append(f["best"])
        if "inside the range" in f["not_identified"]:
            assert not f["bends"]
    assert named == [None] * 10


def test_the_decisions_recipe_validates_and_plans(cli, tmp_path):
    from pathlib import Path

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "decisions_cpu.yaml"
    code, out = cli("plan", recipe, "--store", tmp_path / "store")
    assert code == 0, out
    for sid in ("render/seedqa", "blend/seedqa_40.m/seed2", "train/baseline.s/seed1", "eval/seedqa_5.m/seed1"):
        assert sid in out
    assert "88 stages" in out
