"""PNG plots of a report: the average metric against the arm's synthetic share (with intervals), per task group,
and the training loss of every arm (mean over seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_all(plan, recipe, arms, results, out: Path, groups: dict[str, list[str]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = set(recipe.get("corpora", {}))
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    shown = results.get("metrics") or list(results["values"])
    for ax, metric in zip(axes, ("acc_norm" if "acc_norm" in shown else shown[0], "gold_bpb")):
        values = results["values"][metric]
        first = next(iter(values.values()))
        cols = [c for c in results["columns"] if c in ("seeded", "held_out", "generative", "average") and c in first]
        for col in cols:
            xs, ys, lo, hi = [], [], [], []
            for name, a in arms.items():
                share = sum(v for s, v in a.mix.items() if s not in corpora)
                xs.append(share)
                ys.append(values[name][col])
                # +-1.96 standard errors of the column's mean over training seeds
                members = [t for t in groups.get(col, list(a.scores[metric])) if t in a.scores[metric]]
                m = np.mean([a.scores[metric][t].mean(axis=1) for t in members], axis=0)
                se = float(m.std(ddof=1) / np.sqrt(len(m))) if len(m) > 1 else 0.0
                lo.append(values[name][col] - 1.96 * se)
                hi.append(values[name][col] + 1.96 * se)
            order = np.argsort(xs)
            xs, ys = np.array(xs)[order], np.array(ys)[order]
            err = np.abs(np.array([np.array(lo)[order], np.array(hi)[order]]) - ys)
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=col)
        ax.set_xlabel("synthetic share of the token budget")
        ax.set_ylabel(f"{metric} (bars: +-1.96 s.e. over seeds)")
        ax.legend()
    written.append(_save(fig, out / "metric_vs_share.png"))

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


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
