"""The recipe's `decontamination` section: the exact n-gram stage's and the fuzzy stage's settings and their checks,
beside the code they configure; recipe.py composes them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass
class DecontaminationConfig:
    ngram: int = 13
    ngram_min: int = 8  # short eval items use max(ngram_min, words // 2)
    max_item_freq: int = 10  # n-grams shared by this many eval items are templates, not content
    corpus_report: bool = True  # check every base corpus an arm uses against the index (report only)
    # the fuzzy stage (light edits of eval items: see harness/filters/fuzzy.py)
    fuzzy: bool = True
    fuzzy_ngram: int = 3  # candidate keys: word k-grams of an eval item's question
    fuzzy_threshold: float = 0.75  # question similarity (1 - word edits / question words) that flags a match
    fuzzy_max_item_freq: int = 50  # keys shared by this many eval items find no candidates (templates)


def index_config(dc: DecontaminationConfig) -> dict:
    """The index stage's configuration (hashed): the fuzzy keys appear only when the fuzzy stage is on."""
    out = {"ngram": dc.ngram, "ngram_min": dc.ngram_min, "max_item_freq": dc.max_item_freq}
    if dc.fuzzy:
        out["fuzzy"] = {"ngram": dc.fuzzy_ngram, "threshold": dc.fuzzy_threshold,
                        "max_item_freq": dc.fuzzy_max_item_freq}
    return out


def validate(dc: DecontaminationConfig, bad: Callable[[str, str], None]) -> None:
    if not 5 <= dc.ngram_min <= dc.ngram:
        bad("decontamination", f"need 5 <= ngram_min <= ngram, got ngram_min {dc.ngram_min}, ngram {dc.ngram}")
    if dc.max_item_freq < 2:
        bad("decontamination.max_item_freq", "must be at least 2")
    if not 2 <= dc.fuzzy_ngram <= 5:
        bad("decontamination.fuzzy_ngram", f"must be 2..5 (short keys find light edits), got {dc.fuzzy_ngram}")
    t = dc.fuzzy_threshold
    if not isinstance(t, (int, float)) or math.isnan(t) or not 0.5 <= t <= 1:
        bad("decontamination.fuzzy_threshold", f"must be in [0.5, 1] (below half the question differs), got {t}")
    if dc.fuzzy_max_item_freq < 2:
        bad("decontamination.fuzzy_max_item_freq", "must be at least 2")
