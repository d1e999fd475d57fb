"""Does it hold at scale: `scales:` runs every arm (and seed) at several model sizes and token budgets; the report
ranks the arms at each scale and says how well each smaller scale's ranking agrees with the largest's.

A scale is a model preset and a token budget. Its arms are the recipe's arms named <arm>.<scale> (stages
`train/<arm>.<scale>/seed<k>`, ...); the data stages that do not depend on the budget (tokenizer, tokenization,
synthetic sets) are shared by every scale. The largest scale is the last one listed.

Agreement of a smaller scale with the largest, over the arms' average lead metric:
- Kendall's tau: (concordant - discordant) / pairs over every pair of arms (tau-a; ties count 0);
- pairwise decision accuracy: the share of pairs the largest scale orders (no tie) that the smaller scale orders
  the same way - DataDecide's measure.
Intervals: the report's paired bootstrap at each scale (items drawn alike for every arm and, the eval items being
the same, for every scale; seeds per arm), tau and accuracy recomputed on every replicate; with few arms they are
wide, and they are shown.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Optional

import numpy as np


@dataclass
class ScaleConfig:
    name: str = "???"
    model: Optional[str] = None  # a preset of recipes/models/; None: the recipe's model
    tokens: Optional[int] = None  # the token budget of every arm at this scale; None: data.tokens


def arm_at(arm: str, scale: str) -> str:
    return f"{arm}.{scale}"


def _preset(recipe, name: str) -> Path:
    """A model preset's file, looked up beside the recipe as its own `model:` is."""
    from harness import recipe as rcp

    return rcp._find_include("models", name, Path(recipe.source).parent if recipe.source else rcp.REPO_RECIPES)


def scaled(recipe, scale: ScaleConfig):
    """The recipe at one scale: its model and budget, its arms (and the report's references) named <arm>.<scale>,
    no scales of its own."""
    from omegaconf import OmegaConf

    from harness import recipe as rcp

    sub = copy.deepcopy(recipe)
    sub.scales = []
    if scale.model is not None and scale.model != recipe.model.preset:
        cfg = OmegaConf.merge(OmegaConf.structured(rcp.ModelConfig), OmegaConf.load(_preset(recipe, scale.model)))
        sub.model = OmegaConf.to_object(cfg)
        sub.model.preset = scale.model
    if scale.tokens is not None:
        sub.data.tokens = scale.tokens
    for a in sub.arms:
        a.name = arm_at(a.name, scale.name)
    sub.report.baseline = arm_at(sub.report.baseline, scale.name)
    sub.report.controls = [arm_at(c, scale.name) for c in sub.report.controls]
    return sub


def scaled_dict(recipe: dict, scale: dict) -> dict:
    """The same for a saved recipe (the report's view): arms and references renamed, the scale's budget."""
    sub = copy.deepcopy(recipe)
    sub["scales"] = []
    if scale.get("tokens") is not None:
        sub["data"]["tokens"] = scale["tokens"]
    for a in sub["arms"]:
        a["name"] = arm_at(a["name"], scale["name"])
    rep = sub.setdefault("report", {})
    rep["baseline"] = arm_at(rep.get("baseline", "baseline"), scale["name"])
    rep["controls"] = [arm_at(c, scale["name"]) for c in rep.get("controls", [])]
    return sub


def validate(recipe, bad) -> None:
    """The scales' own keys; each scale's recipe is validated as a recipe by recipe.validate."""
    from harness import recipe as rcp

    names = [s.name for s in recipe.scales]
    if len(recipe.scales) == 1:
        bad("scales", "one scale is no comparison: give at least two (or none)")
    if recipe.base.from_ is not None:
        bad("scales", "continuation arms start from one base model: scales (model sizes) do not apply")
    for i, s in enumerate(recipe.scales):
        if not rcp.NAME_RE.match(s.name):
            bad(f"scales[{i}].name", f"'{s.name}' is not a valid name")
        if names.count(s.name) > 1:
            bad(f"scales[{i}].name", f"duplicate scale '{s.name}'")
        if s.tokens is not None and s.tokens <= 0:
            bad(f"scales[{i}].tokens", f"must be positive, got {s.tokens}")
        if s.model is not None:
            try:
                _preset(recipe, s.model)
            except FileNotFoundError as e:
                bad(f"scales[{i}].model", str(e))


def _pair_signs(x: np.ndarray) -> np.ndarray:
    """sign(x_i - x_j) for every pair i < j; x [arms, ...] -> [pairs, ...]."""
    i, j = np.array(list(combinations(range(len(x)), 2))).T
    return np.sign(x[i] - x[j])


def tau(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-a between two scores of the same arms, along the first axis."""
    return (_pair_signs(x) * _pair_signs(y)).mean(axis=0)


def decision_accuracy(small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """Share of the pairs the large scale orders that the small scale orders alike."""
    s, g = _pair_signs(small), _pair_signs(large)
    decided = g != 0
    return np.where(decided.sum(axis=0) > 0, ((s == g) & decided).sum(axis=0) / np.maximum(decided.sum(axis=0), 1),
                    np.nan)


def agreement(per_scale: dict[str, dict[str, dict[str, np.ndarray]]], arms: list[str], higher: bool,
              n_boot: int) -> dict:
    """Rankings per scale and each smaller scale's agreement with the largest (the last), with intervals.
    per_scale: scale -> arm -> task -> [seeds, items]."""
    from harness.report.sweep import replicates

    scales = list(per_scale)
    point, reps = {}, {}
    for sc in scales:  # the same generator seed: items drawn alike at every scale
        point[sc], reps[sc] = replicates(per_scale[sc], arms, n_boot, seed=11)
    sign = 1 if higher else -1
    out = {"arms": arms, "largest": scales[-1], "rankings": {}, "pairs": len(arms) * (len(arms) - 1) // 2,
           "versus_largest": {}}
    for sc in scales:
        order = np.argsort(-sign * point[sc], kind="stable")
        out["rankings"][sc] = [{"arm": arms[k], "value": float(point[sc][k])} for k in order]
    big = scales[-1]
    for sc in scales[:-1]:
        t, acc = tau(point[sc], point[big]), decision_accuracy(point[sc], point[big])
        tr, ar = tau(reps[sc], reps[big]), decision_accuracy(reps[sc], reps[big])
        ar = ar[~np.isnan(ar)]
        out["versus_largest"][sc] = {
            "tau": float(t), "tau_low": float(np.quantile(tr, 0.025)), "tau_high": float(np.quantile(tr, 0.975)),
            "accuracy": None if np.isnan(acc) else float(acc),
            "accuracy_low": float(np.quantile(ar, 0.025)) if ar.size else None,
            "accuracy_high": float(np.quantile(ar, 0.975)) if ar.size else None}
    return out


def table(agree: dict, label: str, value) -> str:
    arms, big = agree["arms"], agree["largest"]
    lines = [f"## Does it hold at scale: {label}", "",
             f"{len(arms)} arms, {agree['pairs']} pairs; the largest scale is `{big}`. Kendall's tau (tau-a) and the "
             "pairwise decision accuracy of each smaller scale against it, with 95% paired-bootstrap intervals "
             "(wide with few arms). README: \"Scales\".", "",
             "| rank | " + " | ".join(f"`{s}`" for s in agree["rankings"]) + " |",
             "|---|" + "---|" * len(agree["rankings"])]
    for k in range(len(arms)):
        lines.append(f"| {k + 1} | " + " | ".join(f"{r[k]['arm']} ({value(r[k]['value'])})"
                                                  for r in agree["rankings"].values()) + " |")
    lines += ["", "| scale | Kendall's tau vs largest | decision accuracy vs largest |", "|---|---|---|"]
    for sc, v in agree["versus_largest"].items():
        acc = "-" if v["accuracy"] is None else \
            f"{v['accuracy']:.2f} [{v['accuracy_low']:.2f}, {v['accuracy_high']:.2f}]"
        lines.append(f"| {sc} | {v['tau']:+.2f} [{v['tau_low']:+.2f}, {v['tau_high']:+.2f}] | {acc} |")
    return "\n".join(lines) + "\n"
