"""PNG plots of a report: each source's curve (the average metric against the share it raises over the baseline,
with intervals, the fit and its band), and the training loss of every arm (mean over seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_all(plan, recipe, arms, results, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sweeps = results.get("sweeps") or {}
    shares = {k: e for k, e in sweeps.items() if not e.get("knob")}
    written.append(_curves(plt, arms, shares, "share of the token budget raised over the baseline's",
                           out / "metric_vs_share.png"))
    for key, e in sweeps.items():  # a knob swept at one share: a figure of its own (another x axis)
        if e.get("knob"):
            written.append(_curves(plt, arms, {key: e}, f"{e['knob']} (at a share of {e['share']:.1%})",
                                   out / f"metric_vs_{e['source']}_{e['knob']}.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in recipe["arms"]:
        curves = []
        for seed in recipe["seeds"]:
            spec = plan.by_id(f"train/{arm['name']}/seed{seed}")
            lines = (plan.dir(spec) / "metrics.jsonl").read_text().splitlines()
            curves.append([(r["tokens"], r["loss"]) for r in map(json.loads, lines)])
        n = min(len(c) for c in curves)
        tokens = [curves[0][i][0] for i in range(n)]
        loss = np.mean([[c[i][1] for i in range(n)] for c in curves], axis=0)
        ax.plot(tokens, loss, label=arm["name"])
    ax.set_xlabel("tokens")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.legend()
    written.append(_save(fig, out / "training_loss.png"))
    return written


def _curves(plt, arms, curves: dict, xlabel: str, path: Path) -> Path:
    """One panel per metric: each curve's points (+-1.96 standard errors over seeds), its fit and 95% band, and its
    best point where one is identified."""
    from harness.report.build import metric_info

    metrics = list(next(iter(curves.values()))["fits"]) if curves else []
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(5 * max(1, len(metrics)), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        label, higher, scale = metric_info(metric)
        for key, entry in curves.items():
            f = entry["fits"][metric]
            xs = np.array([p["x"] for p in entry["points"]])
            se = []
            for p in entry["points"]:  # the spread of the arm's average over its training seeds
                m = np.mean([x.mean(axis=1) for x in arms[p["arm"]].scores[metric].values()], axis=0)
                se.append(float(m.std(ddof=1) / np.sqrt(len(m))) if len(m) > 1 else 0.0)
            line = ax.errorbar(xs, np.array(f["values"]) * scale, yerr=1.96 * np.array(se) * scale, marker="o",
                               capsize=3, linestyle="none", label=key)
            grid = np.array(f["grid"])
            shown = grid <= xs.max() + 1e-12
            colour = line[0].get_color()
            ax.plot(grid[shown], np.array(f["curve"])[shown] * scale, color=colour, lw=1)
            ax.fill_between(grid[shown], np.array(f["band_low"])[shown] * scale,
                            np.array(f["band_high"])[shown] * scale, color=colour, alpha=0.15)
            if f["best"] is not None:
                ax.axvline(f["best"], color=colour, ls=":", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric}, average (bars: +-1.96 s.e. over seeds)")
        models = sorted({e["fits"][metric]["model"] for e in curves.values()})
        ax.set_title(f"{label}: {'/'.join(models)} fit, 95% band", fontsize=9)
        ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
