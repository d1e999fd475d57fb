"""The recipe's `synthetic` section: the sets an arm can name as sources - the seed-rendering control, task-seeded
Q&A and the unseeded control - typed, with their checks (harness/recipe.py composes them). Their stages:
harness/stages/synthetic.py (seeds, render) and harness/stages/generate.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from harness.checks import bad_number, did_you_mean
from harness.evaluation.suites import check as check_suite_tasks
from harness.generation.verification import VerificationConfig
from harness.generation.verification import describe as describe_verification
from harness.generation.verification import validate as validate_verification
from harness.seeds.config import STRATIFY, CategoryConfig, seed_tasks
from harness.seeds.config import validate as validate_seed_selection

KINDS: dict[str, str] = {"seed_render": "train-split seeds rendered as text, no LLM",
                         "task_seeded": "Q&A generated from train-split seeds",
                         "unseeded_qa": "Q&A generated from corpus passages alone (the unseeded control)"}
GENERATED_KINDS = ("task_seeded", "unseeded_qa")
# what a fair control shares with the seeded set it controls for: it differs only in seeding
FAIR_CONTROL_KEYS = ("layout", "enrich", "verification")


@dataclass
class SyntheticConfig:
    """A synthetic data set that an arm can name as a source.

    kind seed_render: the train-split seeds of `tasks` rendered as text, no LLM (the seed-rendering control).
    kind task_seeded: new Q&A written by the generator from those seeds (few-shot, same subtask), optionally
      grounded in passages of `context_corpus`; enriched, verified, deduplicated, decontaminated.
    kind unseeded_qa: the unseeded control - diverse Q&A written from `passages` passages of `context_corpus`
      alone, nothing about any task; rendered, enriched, verified, deduplicated and decontaminated as the
      task-seeded set is (validate_fair_controls)."""

    kind: str = "???"
    tasks: list[str] = field(default_factory=list)  # lm-eval tasks or groups (train splits); empty: offline_seeded
    # or named categories of tasks, each with its own budget of seeds (then no `tasks`): see harness/seeds/config.py
    categories: dict[str, CategoryConfig] = field(default_factory=dict)
    per_task_cap: Optional[int] = 2000  # seeds per task (each subtask of a named group; None: all)
    per_group_cap: Optional[int] = None  # seeds per named group in all, stratified across its subtasks (mmlu)
    stratify: str = "equal"  # equal: the same from every subtask | proportional: by the subtasks' train sizes
    layout: str = "qa"  # qa | mc
    items_per_doc: int = 8
    seed: int = 0
    samples_per_seed: int = 2  # generations per seed (unseeded_qa: per passage)
    fewshot: int = 3  # examples shown per request, the seed first, the rest from the same subtask
    context_corpus: Optional[str] = None  # a corpus of the recipe: passages for grounding / the unseeded control
    context_share: float = 0.0  # task_seeded: share of requests grounded in a corpus passage
    # passages sampled from context_corpus; null: what the requests use (unseeded_qa: 200; task_seeded: one per
    # grounded request on average, seeds x samples_per_seed x context_share)
    passages: Optional[int] = None
    pairs_per_passage: int = 3  # unseeded_qa
    enrich: bool = False  # ask for a short explanation per item and render it before the answer
    # expected rendered tokens per generation request (kept items x their tokens, plus the passage where it is
    # rendered with them; a pilot's figure is in the report's synthetic table): with it, a set too small for the
    # largest share within data.max_epochs is refused before generation (unseeded_qa at validation, task_seeded
    # once its seeds are counted)
    tokens_per_request: Optional[float] = None
    # votes by a model answering each item again without its key: see harness/generation/verification.py
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    dedup_threshold: float = 0.7  # near-duplicate Jaccard threshold (word 3-grams)
    decontaminate: bool = True  # drop items matching the eval index


def validate(synthetic: dict[str, SyntheticConfig], corpora: dict, eval_suite: str,
             bad: Callable[[str, str], None]) -> None:
    """Each set's keys; its tasks against the evaluation suite; its corpus among the recipe's."""
    for name, s in synthetic.items():
        if name in corpora:
            bad(f"synthetic.{name}", "a corpus has the same name")
        if s.kind not in KINDS:
            known = ", ".join(sorted(KINDS)) or "none are available in this version"
            bad(f"synthetic.{name}.kind", f"unknown synthetic kind '{s.kind}' ({known})")
        if s.layout not in ("qa", "mc"):
            bad(f"synthetic.{name}.layout", f"unknown layout '{s.layout}' (qa, mc)")
        for key in ("items_per_doc", "per_task_cap", "per_group_cap"):
            if getattr(s, key) is not None and getattr(s, key) < 1:
                bad(f"synthetic.{name}.{key}", f"must be at least 1, got {getattr(s, key)}")
        if s.stratify not in STRATIFY:
            bad(f"synthetic.{name}.stratify", f"unknown stratification '{s.stratify}' ({', '.join(STRATIFY)})")
        validate_seed_selection(f"synthetic.{name}", s.tasks, s.categories, bad)
        if s.kind != "unseeded_qa":  # seeds come from the evaluation suite's train splits
            key = f"synthetic.{name}.categories" if s.categories else f"synthetic.{name}.tasks"
            check_suite_tasks(eval_suite, seed_tasks(s.tasks, s.categories), key, bad, seeding=True)
        if s.kind in GENERATED_KINDS:
            for key in ("samples_per_seed", "passages", "pairs_per_passage"):
                if getattr(s, key) is not None and getattr(s, key) < 1:
                    bad(f"synthetic.{name}.{key}", "must be at least 1")
            if s.fewshot < 1:
                bad(f"synthetic.{name}.fewshot", "at least one example (the seed) is shown")
            validate_verification(f"synthetic.{name}.verification", s.verification, bad)
            if bad_number(s.context_share) or not 0 <= s.context_share <= 1:
                bad(f"synthetic.{name}.context_share", f"must be in [0, 1], got {s.context_share}")
            if not 0 < s.dedup_threshold <= 1:
                bad(f"synthetic.{name}.dedup_threshold", f"must be in (0, 1], got {s.dedup_threshold}")
            needs_corpus = s.kind == "unseeded_qa" or s.context_share > 0
            if s.context_corpus is not None and s.context_corpus not in corpora:
                bad(f"synthetic.{name}.context_corpus",
                    f"unknown corpus '{s.context_corpus}'{did_you_mean(s.context_corpus, corpora)}")
            elif needs_corpus and s.context_corpus is None:
                bad(f"synthetic.{name}.context_corpus", "required: " + ("the unseeded control writes Q&A from "
                    "corpus passages" if s.kind == "unseeded_qa" else "context_share > 0 grounds requests in "
                    "corpus passages"))
    validate_fair_controls(synthetic, bad)


def validate_fair_controls(synthetic: dict[str, SyntheticConfig], bad: Callable[[str, str], None]) -> None:
    """An unseeded control is rendered, enriched and verified as a task-seeded set of the recipe is, so that the
    comparison measures seeding and nothing else: it must match one of them on FAIR_CONTROL_KEYS."""
    seeded = {n: s for n, s in synthetic.items() if s.kind == "task_seeded"}
    for name, s in synthetic.items():
        if s.kind != "unseeded_qa" or not seeded:
            continue
        differs = {n: [k for k in FAIR_CONTROL_KEYS if getattr(s, k) != getattr(t, k)] for n, t in seeded.items()}
        ref, keys = min(differs.items(), key=lambda kv: (len(kv[1]), kv[0]))
        if keys:
            what = "; ".join(f"{k}: {_said(s, k)} here, {_said(seeded[ref], k)} in '{ref}'" for k in keys)
            bad(f"synthetic.{name}", f"the unseeded control must be rendered, enriched and verified as the task-"
                                     f"seeded set '{ref}' is, so that only seeding differs ({what})")


def _said(s: SyntheticConfig, key: str) -> str:
    return describe_verification(s.verification) if key == "verification" else str(getattr(s, key)).lower()
