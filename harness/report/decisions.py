"""How sure a comparison is: the seed-noise floor, the smallest effect the design could detect, the seeds that
would make an observed effect significant, each task's signal over noise, and the comparison on the clean items.

One arm's scores on one task are X [S seeds, N items] (the same items for every arm). We read them as a two-way
layout without replication, X[s, i] = mu + item_i + seed_s + e[s, i]:
- m_s = mean_i X[s, i], a seed's score on the task; `seed_var` = var(m_s) with the n-1 correction (S-1 degrees of
  freedom: 1 with two seeds, 2 with three - an estimate that rough is said beside it);
- `resid_var` = sum of the two-way residuals squared / ((S-1)(N-1)): the seed-by-item noise.
For the paired comparison a - b (same items): d_i = mean_s Xa[s, i] - mean_s Xb[s, i] and
- `item_var` = max(0, var(d_i) - resid_var_a / S_a - resid_var_b / S_b) / N: the part of the delta's variance that
  comes from which items were drawn; more seeds do not shrink it;
- SE(S_a, S_b)^2 = item_var + seed_var_a / S_a + seed_var_b / S_b;
- the smallest detectable effect (two-sided 5% test, 80% power) = (z_0.975 + z_0.8) x SE = 2.80 x SE;
- seeds for significance: the smallest S (per arm) with |delta| >= z_0.975 x sqrt(item_var + (seed_var_a +
  seed_var_b) / S); none when |delta| / z_0.975 is within the item term alone (more items, not seeds, would help).
A group's (and the average's) delta is the unweighted mean of its tasks': its seed variance is that of the seeds'
group means (tasks share their seeds) and its item term the sum of the tasks' item terms over (tasks)^2 (tasks
have independent items). A row without seeds (a continuation's base model) has no seed terms.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z_ALPHA = 1.959963984540054  # two-sided 5%
Z_POWER = 0.8416212335729143  # 80% power
SNR_LOW = 2.0  # below this, a task's spread across arms is within twice what seed noise alone gives


def seed_var(x: np.ndarray) -> float | None:
    """Variance of the per-seed means (n-1 correction); None with one seed (not estimable)."""
    return float(x.mean(axis=1).var(ddof=1)) if x.shape[0] > 1 else None


def resid_var(x: np.ndarray) -> float | None:
    """The two-way layout's residual mean square (seed-by-item noise); None with one seed or one item."""
    s, n = x.shape
    if s < 2 or n < 2:
        return None
    r = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    return float((r ** 2).sum() / ((s - 1) * (n - 1)))


def item_var(a: np.ndarray, b: np.ndarray) -> float:
    """The item term of the delta's variance (see the module's docstring)."""
    d = a.mean(axis=0) - b.mean(axis=0)
    if d.size < 2:
        return 0.0
    v = float(d.var(ddof=1))
    for x in (a, b):
        r = resid_var(x)
        v -= (r or 0.0) / x.shape[0]
    return max(v, 0.0) / d.size


@dataclass
class Sureness:
    task: str  # a task, a group or "average"
    delta: float
    seeds: tuple[int, int]  # (arm, reference)
    seed_sd: tuple[float | None, float | None]  # the noise floor of each side: SD of its seeds' scores
    item_var: float
    se: float
    mde: float  # smallest effect detectable with 80% power at this design
    seeds_for_significance: int | None  # None: no number of seeds would do (item noise dominates, or delta 0),
    # or seed noise is not estimable (a side with one seed)
    enough_now: bool  # the observed delta already clears z_0.975 x SE
    estimable: bool  # every side with seeds has at least two: the seed terms are estimates, not zeros

    def to_dict(self) -> dict:
        return asdict(self)


def _seed_part(x: np.ndarray | None) -> tuple[float, int, float | None]:
    """(seed variance, seeds, SD or None) of one side; a side without seeds adds nothing."""
    if x is None:
        return 0.0, 0, None
    v = x.var(ddof=1) if len(x) > 1 else None
    return (float(v) if v is not None else 0.0), len(x), (math.sqrt(v) if v is not None else None)


def sureness(task: str, delta: float, seed_means_a: np.ndarray, seed_means_b: np.ndarray | None,
             item_term: float, max_seeds: int = 1000) -> Sureness:
    """The statistics of one comparison from its per-seed scores (the reference's None: a fixed model) and its
    item term."""
    va, sa, sda = _seed_part(seed_means_a)
    vb, sb, sdb = _seed_part(seed_means_b)
    se = math.sqrt(item_term + va / sa + (vb / sb if sb else 0.0))
    need = None
    target = (abs(delta) / Z_ALPHA) ** 2
    estimable = sa > 1 and sb != 1
    if estimable and delta != 0 and target > item_term:
        per = va + vb
        need = 1 if per == 0 else math.ceil(per / (target - item_term) - 1e-12)
        need = need if need <= max_seeds else None
    return Sureness(task, float(delta), (sa, sb), (sda, sdb), float(item_term), se, (Z_ALPHA + Z_POWER) * se, need,
                    abs(delta) >= Z_ALPHA * se and se > 0, estimable)


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray], groups: dict[str, list[str]],
            b_fixed: bool = False) -> dict[str, Sureness]:
    """Every task's, group's and the average's statistics for arm a against reference b ({task: [seeds, items]});
    b_fixed: the reference is one fixed model (no seed noise)."""
    tasks = sorted(a)
    item = {t: item_var(a[t], b[t]) for t in tasks}
    out = {}
    for t in tasks:
        out[t] = sureness(t, float(a[t].mean() - b[t].mean()), a[t].mean(axis=1),
                          None if b_fixed else b[t].mean(axis=1), item[t])
    for g, members in {**groups, "average": tasks}.items():
        members = [t for t in members if t in a]
        if not members:
            continue
        ma = np.mean([a[t].mean(axis=1) for t in members], axis=0)
        mb = None if b_fixed else np.mean([b[t].mean(axis=1) for t in members], axis=0)
        delta = float(np.mean([a[t].mean() - b[t].mean() for t in members]))
        out[g] = sureness(g, delta, ma, mb, sum(item[t] for t in members) / len(members) ** 2)
    return out


def signal_to_noise(arms: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    """Per task: the spread of the arms' scores (SD across arms, n-1) over the noise of one arm's score (the pooled
    seed variance over the seeds each arm has; with one seed, the items' standard error of a mean, which is not
    seed noise - said in `noise_from`). About 1 when the arms differ by noise alone; below SNR_LOW: low signal."""
    names = list(arms)
    tasks = sorted(arms[names[0]])
    out = {}
    for t in tasks:
        means = np.array([arms[n][t].mean() for n in names])
        spread = float(means.std(ddof=1)) if len(names) > 1 else 0.0
        seeds = arms[names[0]][t].shape[0]
        if seeds > 1:
            noise = math.sqrt(np.mean([seed_var(arms[n][t]) for n in names]) / seeds)
            source = f"seeds ({seeds} per arm)"
        else:
            noise = math.sqrt(np.mean([arms[n][t].var(ddof=1) / arms[n][t].shape[1] for n in names]))
            source = "items (one seed: seed noise not estimable)"
        snr = spread / noise if noise > 0 else (math.inf if spread > 0 else 0.0)
        out[t] = {"spread": spread, "noise": noise, "noise_from": source, "snr": snr, "low": snr < SNR_LOW}
    return out


def clean_columns(item_keys: dict[str, list], matched: dict[str, set]) -> dict[str, np.ndarray]:
    """Per task, the positions of the items that no arm's training data matched."""
    return {t: np.array([k not in matched.get(t, set()) for k in keys], dtype=bool) for t, keys in item_keys.items()}


def _num(x: float, scale: float, sign: str = "") -> str:
    """As the report's tables print values (and, with sign "+", deltas)."""
    from harness.report.build import _value

    return _value(x, scale, sign)


def verdict(s: dict) -> str:
    """The seeds-for-significance cell in words."""
    if s["enough_now"]:
        return f"significant now ({s['seeds'][0]} seeds)"
    if not s["estimable"]:
        return "not estimable (one seed)"
    if s["delta"] == 0:
        return "no effect observed"
    if s["seeds_for_significance"] is None:
        return "none would do: item noise dominates (more items)"
    return f"{s['seeds_for_significance']} per arm"


def table(metric_label: str, scale: float, ref: str, rows: dict[str, dict], clean: dict[str, dict],
          column: str = "average") -> str:
    """One reference's comparisons on one column: delta with its interval, each side's noise floor, the smallest
    detectable effect, the seeds that would make the delta significant, and the delta on the clean items."""
    lines = [f"### how sure: {metric_label}, `{column}`, against `{ref}`", "",
             "| arm | delta [95% CI] | noise floor: SD of one run's score across seeds (arm; ref) | smallest "
             "detectable effect (80% power) | seeds for significance | clean items: delta [95% CI] (items) |",
             "|---|---|---|---|---|---|"]
    for arm, r in rows.items():
        s, d = r["sureness"][column], r["delta"][column]
        sds = "; ".join("fixed model" if n == 0 else "n/a (1 seed)" if sd is None else
                        f"{_num(sd, scale)} ({n - 1} df)" for sd, n in zip(s["seed_sd"], s["seeds"]))
        c = clean.get(arm)
        cl = "-" if c is None else (f"{_num(c['delta'], scale, '+')} [{_num(c['low'], scale, '+')}, "
                                    f"{_num(c['high'], scale, '+')}] ({c['items']} of {c['all_items']})")
        lines.append(f"| {arm} | {_num(d['delta'], scale, '+')} [{_num(d['low'], scale, '+')}, "
                     f"{_num(d['high'], scale, '+')}] | "
                     f"{sds} | {_num(s['mde'], scale)} | {verdict(s)} | {cl} |")
    return "\n".join(lines) + "\n"


def snr_table(metric_label: str, scale: float, snr: dict[str, dict], short) -> str:
    lines = [f"### signal over noise per task: {metric_label}", "",
             "| task | spread of the arms' scores (SD) | noise of one arm's score | from | SNR |",
             "|---|---|---|---|---|"]
    for t, r in snr.items():
        flag = " (low)" if r["low"] else ""
        lines.append(f"| {short(t)} | {_num(r['spread'], scale)} | {_num(r['noise'], scale)} | {r['noise_from']} | "
                     f"{r['snr']:.2f}{flag} |")
    low = [short(t) for t, r in snr.items() if r["low"]]
    lines += ["", f"Low signal at this scale (SNR < {SNR_LOW:g}): {', '.join(low)}. They stay in every table; their "
                  f"deltas are mostly noise here." if low else f"Every task's SNR is at least {SNR_LOW:g}."]
    return "\n".join(lines) + "\n"
