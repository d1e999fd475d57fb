"""The comparison statistics against independent computations, on result sets with known differences."""

import numpy as np
import pytest
from scipy import stats as sps

from harness.report import stats


def test_point_estimates_are_exact_means():
    rng = np.random.default_rng(0)
    a = {"t1": rng.random((3, 50)), "t2": rng.random((3, 80))}
    b = {"t1": rng.random((2, 50)), "t2": rng.random((2, 80))}
    d = {x.task: x for x in stats.compare(a, b, n_boot=200, groups={"g": ["t1"]})}
    assert d["t1"].estimate == pytest.approx(a["t1"].mean() - b["t1"].mean(), abs=1e-12)
    assert d["average"].estimate == pytest.approx(np.mean([a[t].mean() - b[t].mean() for t in a]), abs=1e-12)
    assert d["g"].estimate == pytest.approx(d["t1"].estimate, abs=1e-12)


def test_single_seed_interval_matches_scipy_paired_bootstrap():
    """With one seed per arm, our bootstrap is the percentile bootstrap of the mean per-item difference."""
    rng = np.random.default_rng(1)
    n = 400
    base = (rng.random(n) < 0.5).astype(float)
    better = base.copy()
    flip = rng.choice(np.nonzero(base == 0)[0], 40, replace=False)  # a known +10 point improvement
    better[flip] = 1.0
    ours = stats.compare({"t": better[None]}, {"t": base[None]}, n_boot=20000, seed=3)[0]
    ref = sps.bootstrap((better - base,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                        random_state=4).confidence_interval
    assert ours.estimate == pytest.approx(0.10, abs=1e-12)
    assert ours.low == pytest.approx(ref.low, abs=0.006) and ours.high == pytest.approx(ref.high, abs=0.006)
    assert ours.significant


def test_seed_noise_widens_the_interval_and_no_difference_is_not_significant():
    rng = np.random.default_rng(2)
    items = rng.random(300)
    # two arms drawn from the same distribution: seeds differ by model noise, items by difficulty
    a = {"t": np.clip(items[None] + rng.normal(0, 0.3, (3, 300)), 0, 1)}
    b = {"t": np.clip(items[None] + rng.normal(0, 0.3, (3, 300)), 0, 1)}
    d = stats.compare(a, b, n_boot=4000, seed=0)[0]
    assert d.low < 0 < d.high and not d.significant
    # the seed-level part: an independent computation of the between-seed spread bounds the interval from below
    seed_means_a, seed_means_b = a["t"].mean(axis=1), b["t"].mean(axis=1)
    se = np.sqrt(seed_means_a.var(ddof=1) / 3 + seed_means_b.var(ddof=1) / 3)
    assert (d.high - d.low) > 1.0 * se


def test_seed_effect_alone_gives_the_interval_its_width():
    """No item noise in the difference: a[s, i] = item[i] + offset_a[s], b[s, i] = item[i] + offset_b[s]. Every
    paired item resample gives the same delta, so the whole width comes from resampling the seeds: with it the
    interval is the seed bootstrap's (enumerated exactly below) and a 0.03 gain from four seeds this spread is not
    significant; resampling items alone would collapse it to [0.03, 0.03]."""
    items = np.random.default_rng(5).uniform(0.2, 0.8, 300)
    off_a, off_b = np.array([0.10, -0.05, 0.08, -0.01]), np.array([0.0, 0.02, -0.04, 0.02])
    a, b = {"t": items[None] + off_a[:, None]}, {"t": items[None] + off_b[:, None]}
    d = stats.compare(a, b, n_boot=8000, seed=0)[0]
    assert d.estimate == pytest.approx(0.03, abs=1e-12)
    se = np.sqrt(off_a.var(ddof=1) / 4 + off_b.var(ddof=1) / 4)  # the seed-level standard error, ~0.038
    # a normal interval from it would be 2 x 1.96 x se wide (x sqrt(3/4): the bootstrap's plug-in variance)
    assert d.high - d.low >= 2.0 * se
    assert d.low < 0 < d.high and not d.significant
    # the exact seed bootstrap: every resample of each arm's four seeds (4^4 each, equally likely), differenced
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 4, indexing="ij"), -1).reshape(-1, 4)
    diffs = np.subtract.outer(off_a[grid].mean(axis=1), off_b[grid].mean(axis=1)).ravel()
    low, high = np.quantile(diffs, [0.025, 0.975])
    assert d.low == pytest.approx(low, abs=0.2 * se) and d.high == pytest.approx(high, abs=0.2 * se)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="different tasks"):
        stats.compare({"t": np.zeros((1, 3))}, {"u": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="3 items in one arm, 4 in the other"):
        stats.compare({"t": np.zeros((1, 3))}, {"t": np.zeros((1, 4))})
