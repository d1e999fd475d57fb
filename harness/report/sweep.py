"""At which share: `sweep:` expands a source's share into arms; the report fits each source's dose-response curve
and names the best share where the data identify one; `harness propose` names the shares to run next.

Curves. An arm lies on source X's curve when X is the only source whose share it raises over the baseline's (the
tokens come from the other sources); its dose is that raise. The baseline is every curve's share 0. Arms of other
sources are other curves (the seed-rendering control at 10% and task-seeded Q&A at 1-2% are two curves, never
joined).

The stated model: each arm's score (the unweighted average over the tasks) is a quadratic in the share,
y = b0 + b1 s + b2 s^2, fitted by least squares to the arms' means (a line with two shares: nothing to identify).
Intervals: the report's paired bootstrap (items resampled alike for every arm, seeds per arm), the curve refitted
on every replicate. The best share is the fitted curve's optimum on [0, the largest share tested]; it is
identified when that optimum lies strictly inside the range and the curve bends beyond noise (the quadratic term's
95% interval excludes 0 on the side of an optimum) - else "not identified" (the optimum is at an edge: no share
helps, or a larger share might help more; or the bend is within the noise). Its interval: the 2.5-97.5th
percentiles of the replicates' optima (the optimum is not a smooth statistic: the interval need not be centred on
it). Repetition: within one set, epochs grow with the share (share x budget / unique tokens), so the fit cannot
separate them; each point's epochs are shown, and a best share that would repeat the set more than
data.max_epochs is flagged. A knob swept at one share varies the set's size, and so its epochs, at a fixed share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

GRID = 201


@dataclass
class SweepConfig:
    """A source's share swept: an arm per share, the baseline's mix with the share moved from `replaces` to
    `source`; arms named <name or source>_<share in percent>, e.g. seedqa_10.
    Or a synthetic set's numeric knob swept (`knob`, `values`) at one `share`: a copy of the set per value, named
    <name or source>_<knob><value> (e.g. taskqa_samples_per_seed4), and an arm of the same name mixing it in."""

    source: str = "???"
    shares: list[float] = field(default_factory=list)
    replaces: Optional[str] = None  # the source that gives up the tokens; None: the baseline's largest source
    name: Optional[str] = None  # the arms' name prefix; None: the source's name
    knob: Optional[str] = None  # a numeric key of the synthetic set (samples_per_seed, per_task_cap, passages, ...)
    values: list[float] = field(default_factory=list)  # the knob's values
    share: Optional[float] = None  # with a knob: every arm's share of its copy of the set


def arm_name(prefix: str, share: float) -> str:
    return f"{prefix}_{round(share * 100, 6):g}"


def knob_name(prefix: str, knob: str, value: float) -> str:
    return f"{prefix}_{knob}{value:g}"


def knobs() -> dict[str, type]:
    """The synthetic sets' numeric keys a sweep may vary, with their type (int or float)."""
    import typing
    from dataclasses import fields

    from harness.recipe import SyntheticConfig

    hints = typing.get_type_hints(SyntheticConfig)
    kinds = {int: int, float: float, Optional[int]: int, Optional[float]: float}
    return {f.name: kinds[hints[f.name]] for f in sorted(fields(SyntheticConfig), key=lambda f: f.name)
            if hints[f.name] in kinds and f.name != "seed"}


def _moved(base: dict, replaces: str, source: str, share: float) -> dict:
    mix = dict(base)
    mix[replaces] = round(mix[replaces] - share, 12)
    mix[source] = round(mix.get(source, 0.0) + share, 12)
    return {s: v for s, v in mix.items() if v > 0}


def expand(recipe, bad) -> None:
    """Add each sweep's arms (and a knob sweep's copies of its set) to the recipe; an arm already there with the
    same mix is kept, so that a saved, expanded recipe loads again unchanged. Problems go to bad(key, message)."""
    import copy

    from harness.checks import did_you_mean
    from harness.recipe import ArmConfig

    if not recipe.sweep:
        return
    by_name = {a.name: a for a in recipe.arms}
    base = by_name.get(recipe.report.baseline)
    if base is None:
        bad("sweep", f"sweeps start from the baseline arm '{recipe.report.baseline}', which the recipe lacks")
        return
    sources = {**recipe.corpora, **recipe.synthetic}

    def add(key: str, name: str, mix: dict) -> None:
        if name in by_name:
            if {s: v for s, v in by_name[name].mix.items() if v > 0} != mix:
                bad(key, f"arm '{name}' exists with another mix; name the sweep (name:)")
            return
        by_name[name] = ArmConfig(name=name, mix=mix)
        recipe.arms.append(by_name[name])

    for k, sw in enumerate(recipe.sweep):
        key = f"sweep[{k}]"
        if sw.source not in sources:
            bad(f"{key}.source", f"unknown source '{sw.source}'{did_you_mean(sw.source, sources)}")
            continue
        replaces = sw.replaces or max(base.mix, key=lambda s: base.mix[s])
        if replaces not in base.mix:
            bad(f"{key}.replaces", f"'{replaces}' is not in the baseline's mix ({', '.join(base.mix)})")
            continue
        if replaces == sw.source:
            bad(f"{key}.replaces", f"'{replaces}' is the swept source itself")
            continue
        limit = base.mix[replaces]
        if sw.knob is not None:
            if sw.knob not in knobs() or sw.source not in recipe.synthetic:
                near = did_you_mean(sw.knob, knobs()) or f" ({', '.join(knobs())})"
                bad(f"{key}.knob", f"'{sw.knob}' is not a numeric key of a synthetic set{near}"
                    if sw.source in recipe.synthetic else f"'{sw.source}' is a corpus: only a synthetic set has knobs")
                continue
            if sw.shares:
                bad(f"{key}.shares", "a knob sweep holds the share fixed: give `share`, not `shares`")
            if sw.share is None or not 0 < sw.share <= limit + 1e-12:
                bad(f"{key}.share", f"{sw.share}: a knob sweep needs one share in (0, {limit:g}], the baseline's "
                                    f"share of '{replaces}' that it replaces")
                continue
            if len(sw.values) < 2 or len(set(sw.values)) != len(sw.values):
                bad(f"{key}.values", f"at least two distinct values of {sw.knob}, got {list(sw.values)}")
                continue
            kind = knobs()[sw.knob]
            if kind is int and any(not float(v).is_integer() for v in sw.values):
                bad(f"{key}.values", f"{sw.knob} is a whole number, got {list(sw.values)}")
                continue
            for v in sw.values:
                name = knob_name(sw.name or sw.source, sw.knob, v)
                if name not in recipe.synthetic:
                    recipe.synthetic[name] = copy.deepcopy(recipe.synthetic[sw.source])
                    setattr(recipe.synthetic[name], sw.knob, kind(v))  # the set's own checks see the value
                add(f"{key}.values", name, _moved(base.mix, replaces, name, sw.share))
            continue
        if not sw.shares:
            bad(f"{key}.shares", "no shares given")
        if len(set(sw.shares)) != len(sw.shares):
            bad(f"{key}.shares", f"duplicate shares in {list(sw.shares)}")
        for share in sw.shares:
            if not isinstance(share, (int, float)) or not 0 < share <= limit + 1e-12:
                bad(f"{key}.shares", f"{share}: a share must be in (0, {limit:g}], the baseline's share of "
                                     f"'{replaces}' that it replaces")
                continue
            add(f"{key}.shares", arm_name(sw.name or sw.source, share), _moved(base.mix, replaces, sw.source, share))


def knob_curves(recipe: dict) -> dict[str, dict]:
    """{"<source>:<knob>": {"knob", "source", "share", "points": [(arm, value)], "sets": [its copy of the set]}} of
    a saved recipe's knob sweeps; a point's arm is the one that mixes in the value's copy of the set (whatever a
    scale renamed it)."""
    out = {}
    for sw in recipe.get("sweep") or []:
        if sw.get("knob"):
            prefix = sw.get("name") or sw["source"]
            points, sets = [], []
            for v in sorted(sw["values"]):
                copy_of = knob_name(prefix, sw["knob"], v)
                for a in recipe["arms"]:
                    if a["mix"].get(copy_of, 0) > 0:
                        points.append((a["name"], float(v)))
                        sets.append(copy_of)
            out[f"{sw['source']}:{sw['knob']}"] = {"knob": sw["knob"], "source": sw["source"], "share": sw["share"],
                                                   "points": points, "sets": sets}
    return out


def curves(arms: list[dict], baseline: str, exclude: set = frozenset()) -> dict[str, list[tuple[str, float]]]:
    """{source: [(arm, share raised over the baseline's)]}, the baseline first at 0, by share; `exclude`: arms on
    other curves (a knob sweep's)."""
    base = next(a for a in arms if a["name"] == baseline)["mix"]
    out: dict[str, list[tuple[str, float]]] = {}
    for a in arms:
        if a["name"] == baseline or a["name"] in exclude:
            continue
        raised = {s: v - base.get(s, 0.0) for s, v in a["mix"].items() if v > base.get(s, 0.0) + 1e-12}
        if len(raised) == 1:
            (src, share), = raised.items()
            out.setdefault(src, []).append((a["name"], float(share)))
    return {s: [(baseline, 0.0)] + sorted(pts, key=lambda p: p[1]) for s, pts in sorted(out.items())}


def replaced(arms: list[dict], baseline: str, arm: str) -> str | None:
    """The source that gave up the tokens of `arm`'s raise, when exactly one did."""
    mixes = {a["name"]: a["mix"] for a in arms}
    fell = [s for s, v in mixes[baseline].items() if mixes[arm].get(s, 0.0) < v - 1e-12]
    return fell[0] if len(fell) == 1 else None


def _design(s: np.ndarray, degree: int) -> np.ndarray:
    return np.stack([s ** k for k in range(degree + 1)], axis=1)


def replicates(scores: dict[str, dict[str, np.ndarray]], names: list[str], n_boot: int, seed: int = 0,
               chunk: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """Each arm's average over tasks: (point [arms], replicates [arms, n_boot]); items drawn alike for every arm,
    seeds per arm (the report's paired bootstrap)."""
    from harness.report.stats import _resampled_means

    tasks = sorted(scores[names[0]])
    rng = np.random.default_rng(seed)
    point = np.array([np.mean([scores[n][t].mean() for t in tasks]) for n in names])
    reps = np.zeros((len(names), n_boot))
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        seed_idx = [rng.integers(0, scores[n][tasks[0]].shape[0], (m, scores[n][tasks[0]].shape[0])) for n in names]
        for t in tasks:
            items = rng.integers(0, scores[names[0]][t].shape[1], (m, scores[names[0]][t].shape[1]))
            for k, n in enumerate(names):
                reps[k, done:done + m] += _resampled_means(scores[n][t], seed_idx[k], items) / len(tasks)
        done += m
    return point, reps


def fit(shares: np.ndarray, point: np.ndarray, reps: np.ndarray, higher: bool, upto: float | None = None,
        what: str = "share") -> dict:
    """The stated model fitted to the arms' means and to every replicate; the best `what` (the share, or a knob's
    value) on the tested range with its interval; the curve and its 95% band from the smallest tested to `upto`
    (default: the largest tested)."""
    distinct = len(set(np.round(shares, 12)))
    degree = min(2, distinct - 1)
    smin, smax = float(shares.min()), float(shares.max())
    grid = np.linspace(smin, max(upto or smax, smax), GRID)
    pinv = np.linalg.pinv(_design(shares, degree))
    coef, coef_reps = pinv @ point, pinv @ reps  # [d+1], [d+1, B]
    g = _design(grid, degree)
    curve, band = g @ coef, g @ coef_reps  # [G], [G, B]
    tested = grid <= smax + 1e-12
    pick = np.argmax if higher else np.argmin
    best_i = int(pick(curve[tested]))
    best_reps = grid[pick(band[tested], axis=0)]
    last = int(tested.sum()) - 1
    interior = float(np.mean((best_reps > smin) & (best_reps < smax)))
    # an optimum inside the range by the fit, on a curve that bends the right way beyond noise: the quadratic
    # term's 95% interval excludes 0 on the side of an optimum (a flat, noisy curve often has an interior vertex)
    bends = degree == 2 and bool(np.quantile(coef_reps[2], 0.975) < 0 if higher else
                                 np.quantile(coef_reps[2], 0.025) > 0)
    identified = degree == 2 and 0 < best_i < last and bends
    if degree < 2:
        why = f"{distinct} {what} values" + (" including 0" if what == "share" else "") + \
            ": a line, no optimum to identify (test at least 3)"
    elif not 0 < best_i < last:
        low = "no tested share beats the baseline by the fit" if what == "share" else \
            f"the smallest {what} tested is best by the fit"
        why = "the optimum is at the edge of the tested range: " + (
            low if best_i == 0 else f"a larger {what} might do better")
    elif not identified:
        why = "the fit's optimum is inside the range, but the curve's bend is within the noise (its quadratic " \
              "term's 95% interval includes 0)"
    else:
        why = ""
    return {"model": "quadratic" if degree == 2 else "linear", "coef": coef.tolist(),
            "best": float(grid[best_i]) if identified else None,
            "best_low": float(np.quantile(best_reps, 0.025)) if identified else None,
            "best_high": float(np.quantile(best_reps, 0.975)) if identified else None,
            "interior_share": interior, "bends": bends,
            "not_identified": why, "grid": grid.tolist(), "curve": curve.tolist(),
            "band_low": np.quantile(band, 0.025, axis=1).tolist(),
            "band_high": np.quantile(band, 0.975, axis=1).tolist()}


def propose(result: dict, count: int, allowed: float, tested: list[float], integer: bool = False) -> list[float]:
    """The next shares (or knob values) for one curve: where the fitted curve's 95% band is widest, above 0, up to
    `allowed` and at most twice the largest tested, at least a tenth of the tested range from any tested or already
    proposed point; `integer`: whole numbers (a knob such as samples_per_seed)."""
    grid = np.array(result["grid"])
    width = np.array(result["band_high"]) - np.array(result["band_low"])
    smin, smax = min(tested), max(tested)
    ok = (grid > 0) & (grid <= min(allowed, 2 * smax) + 1e-12)
    gap = max((smax - smin) / 10, 1.0 if integer else 0.0)
    picked: list[float] = []
    for i in np.argsort(-width):
        s = float(round(grid[i])) if integer else round(float(grid[i]), 4)
        if ok[i] and all(abs(s - t) >= gap - 1e-12 for t in list(tested) + picked):
            picked.append(int(s) if integer else s)
            if len(picked) == count:
                break
    return sorted(picked)
