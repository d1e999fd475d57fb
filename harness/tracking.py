"""W&B runs for training, evaluation and the report, started one way.

Compute nodes often have no route to W&B. A run asked for `online` that cannot reach it within
`wandb.init_timeout` seconds (or has no API key there) is written offline instead, with a warning that says how to
upload it later (`wandb sync`); nothing that a stage computes or publishes depends on W&B being reachable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from harness.generation import verification
from harness.seeds.config import seed_tasks


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def init_run(cfg: dict | None, directory: Path, say: Callable[[str], None] = _warn, run_id: str | None = None,
             resume: bool = False, **run_args):
    """A started wandb run, or None when W&B is disabled. `run_args` go to wandb.init (group, name, job_type, ...).
    `run_id` names the run (a stage's digest: a requeued training continues its run); `resume` adds to the online
    run of that id (an evaluation's scores on its training run), which offline runs cannot do: offline, `resume`
    returns None and the caller starts a run of its own. W&B's own banners are silenced (the console is ours)."""
    w = cfg or {}
    mode = w.get("mode", "disabled")
    if mode == "disabled":
        return None
    import wandb

    args = {"project": w.get("project", "task-seeded"), "dir": str(directory), "reinit": "finish_previous",
            **({"id": run_id} if run_id else {}), **run_args}
    if mode == "online":
        try:
            return wandb.init(mode="online", resume="allow" if run_id else None,
                              settings=wandb.Settings(init_timeout=float(w.get("init_timeout", 60)), silent=True),
                              **args)
        except Exception as e:  # unreachable, timed out, no API key: any of them, the run goes on offline
            say(f"W&B could not be reached ({type(e).__name__}: {str(e).strip()[:300]}); writing this run "
                f"offline under {Path(directory) / 'wandb'} - upload it later with `wandb sync "
                f"{Path(directory) / 'wandb'}/offline-run-*`")
        wandb.teardown()  # W&B's service still holds the id of the failed online run: a fresh one for the offline
    if resume:
        return None
    return wandb.init(mode="offline", settings=wandb.Settings(silent=True), **args)


def describe(run, root: Path) -> dict:
    """Where a run is, for the manifests and the report run: its id, whether it is offline, its folder."""
    return {"id": run.id, "offline": bool(run.settings._offline), "dir": str(Path(run.dir).parent.relative_to(root))}


def run_config(recipe, arm, seed: int) -> dict:
    """What a W&B run of one arm and seed is filtered and grouped by, without lists: W&B shows nested keys dotted
    (`share.taskqa`, `synthetic.taskqa.generator`), so the run table groups by `arm` and filters by a source's share
    with no custom code. Every source of the experiment has a share (0 where the arm does not use it)."""
    sources = sorted({s for a in recipe.arms for s in a.mix})
    synthetic = {}
    for name in sorted(s for s in arm.mix if s in recipe.synthetic and arm.mix[s] > 0):
        s = recipe.synthetic[name]
        generated = s.kind in ("task_seeded", "unseeded_qa")
        synthetic[name] = {"kind": s.kind, "generator": recipe.generator.model if generated else "none",
                           "samples_per_seed": s.samples_per_seed if generated else 0,
                           "verification": verification.describe(s.verification) if generated else "off",
                           "verifier": ("none" if not (generated and s.verification.enabled) else
                                        recipe.verifier.model if recipe.verifier else "the generator"),
                           "enrich": bool(s.enrich and generated),
                           "tasks": ",".join(seed_tasks(s.tasks, s.categories)) if s.kind != "unseeded_qa" else ""}
    return {"experiment": recipe.experiment, "arm": arm.name, "seed": int(seed),
            "model": recipe.base.from_ or recipe.model.preset, "continuation": recipe.base.from_ is not None,
            "tokens": int(recipe.data.tokens), "seq_length": recipe.data.seq_length,
            "share": {s: float(arm.mix.get(s, 0.0)) for s in sources},
            "synthetic_share": float(sum(v for s, v in arm.mix.items() if s in recipe.synthetic)),
            "synthetic": synthetic, "lr": recipe.train.lr, "schedule": recipe.train.schedule,
            "eval_suite": recipe.eval.suite, "eval_limit": recipe.eval.limit}
