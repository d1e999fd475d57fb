"""Verification of generated items: a model answers each item again without its key, `votes` times, and the item
stays when enough answers agree with the key.

Items with options: each vote sees the options shuffled its own way (and the item's passage); the votes needed are
the fewest more than half that an answerer guessing at random would reach with probability at most
`max_chance_pass` - three votes of a same-model majority pass a wrongly keyed two-option item half the time, so a
two-option item needs four of four. With `votes: null` the number of votes is scaled to the options: the fewest
(3 to 9) for which such a requirement exists. Open-answer items (and the unseeded control's pairs): the model
answers in a few words and a vote agrees when its normalised answer matches the key (SQuAD's token F1 >= 0.5, or
the key contained in it); a majority of the votes must agree. Votes are sampled at the verification's own (low)
temperature, by the generator or by the recipe's `verifier:` model."""

from __future__ import annotations

import collections
import math
import random
from dataclasses import dataclass
from typing import Callable, Optional

from harness.filters.text import contains, words
from harness.generation import parse as fmt
from harness.generation.backends import Request
from harness.generation.driver import Driver, request_seed
from harness.generation.prompts import Templates

MAX_VOTES = 9
TYPES = ("mc", "completion", "yesno", "open")


@dataclass
class VerificationConfig:
    """A synthetic set's verification (every set its own; a fair control uses the same as the seeded set)."""

    enabled: bool = True
    votes: Optional[int] = None  # None: scaled to the number of options (see the module's docstring)
    max_chance_pass: float = 0.1  # chance that random answers pass a wrongly keyed item
    temperature: float = 0.2  # the votes' sampling temperature (the generator's is for writing, not answering)
    open_answers: bool = True  # verify items without options too (else they are kept and counted as unverified)


def validate(where: str, v: VerificationConfig, bad: Callable[[str, str], None]) -> None:
    if v.votes is not None and not 1 <= v.votes <= MAX_VOTES:
        bad(f"{where}.votes", f"must be 1..{MAX_VOTES} (or null: scaled to the options; `enabled: false` turns "
                              f"verification off), got {v.votes}")
    if not isinstance(v.max_chance_pass, (int, float)) or not 0 < v.max_chance_pass < 1:
        bad(f"{where}.max_chance_pass", f"must be in (0, 1), got {v.max_chance_pass}")
    if not isinstance(v.temperature, (int, float)) or math.isnan(v.temperature) or v.temperature < 0:
        bad(f"{where}.temperature", f"must be >= 0, got {v.temperature}")


def describe(v: VerificationConfig, verifier: str | None = None) -> str:
    """The protocol in a few words (W&B's run config, the report); `verifier`: its model, when not the generator."""
    if not v.enabled:
        return "off"
    votes = f"{v.votes} votes" if v.votes else "votes scaled to the options"
    opened = ", open answers too" if v.open_answers else ", options only"
    by = f", by {verifier}" if verifier else ""
    return f"{votes}, chance pass <= {v.max_chance_pass:g}, temperature {v.temperature:g}{opened}{by}"


def chance_pass(n: int, need: int, options: int) -> float:
    """P(at least `need` of `n` uniformly random picks among `options` land on one given option)."""
    p = 1 / options
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(need, n + 1))


def requirement(options: int, votes: int | None, alpha: float) -> tuple[int, int, float]:
    """(votes, votes that must agree with the key, chance that random answers pass) for an item with `options`
    options (0: an open answer, which random answers do not match)."""
    if options < 2:
        n = votes or 3
        return n, n // 2 + 1, 0.0
    for n in ([votes] if votes else range(3, MAX_VOTES + 1)):
        for need in range(n // 2 + 1, n + 1):
            if chance_pass(n, need, options) <= alpha:
                return n, need, chance_pass(n, need, options)
    n = votes or MAX_VOTES  # no requirement reaches alpha with these votes: unanimity, and its chance is reported
    return n, n, chance_pass(n, n, options)


def matches_key(reply: str, key: str) -> bool:
    """An open answer agrees with the key: token F1 >= 0.5 of their normalised words, or the key inside it."""
    r, k = words(reply.strip().splitlines()[0] if reply.strip() else ""), words(key)
    if not r or not k:
        return False
    if contains(r, k):
        return True
    common = sum((collections.Counter(r) & collections.Counter(k)).values())
    return common > 0 and 2 * common / (len(r) + len(k)) >= 0.5


def _options(it: dict) -> int:
    return len(it["choices"]) if it.get("choices") else 0


def _requirement(it: dict, cfg: VerificationConfig) -> tuple[int, int, float] | None:
    """The item's (votes, needed, chance pass), or None when this protocol does not check it."""
    k = _options(it)
    if not cfg.enabled or (not k and not cfg.open_answers):
        return None
    return requirement(k, cfg.votes, cfg.max_chance_pass)


def requests(items: list[dict], cfg: VerificationConfig, tpl: Templates, s) -> tuple[list[Request], dict]:
    """The votes' requests and, per request, the permutation of the options it shows (None for open answers);
    `s`: the stage's Sampling (its seed)."""
    reqs, perms = [], {}
    for it in items:
        req = _requirement(it, cfg)
        if req is None:
            continue
        k = _options(it)
        for v in range(req[0]):
            key = f"verify:{it['item_id']}#{v}"
            if k:
                perm = list(range(k))
                random.Random(request_seed(s.seed, key)).shuffle(perm)
                shown = {**it, "choices": [it["choices"][i] for i in perm]}
                kind = "mc" if it["type"] == "yesno" else it["type"]
                text = fmt.show(shown, kind, with_answer=False, with_passage=True)  # a grounded item's passage too
                reqs.append(s.request(key, tpl.render("verify", question=text), temperature=cfg.temperature,
                                      max_tokens=8))
                perms[key] = perm
            else:
                text = fmt.show({**it, "type": "open"}, "open", with_answer=False, with_passage=True)
                reqs.append(s.request(key, tpl.render("verify_open", question=text), temperature=cfg.temperature,
                                      max_tokens=48))
                perms[key] = None
    return reqs, perms


def verify(items: list[dict], cfg: VerificationConfig, driver: Driver, tpl: Templates, s) -> dict:
    """Marks each item `verified` (True, False, or None where it was not checked) with its `votes` (per option, or
    the open answers' agreements) and `verification` (votes, needed, chance); returns the counts, per item type
    too (checked, passed, votes unparsed, the agreement among parsed votes, unanimous items)."""
    reqs, perms = requests(items, cfg, tpl, s)
    got = driver.run("verify", reqs) if reqs else {}
    counts = collections.Counter()
    per_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for it in items:
        req = _requirement(it, cfg)
        if req is None:
            it["verified"], it["votes"] = None, None
            counts["unverified"] += 1
            continue
        n, need, chance = req
        k = _options(it)
        picks = []
        for v in range(n):
            key = f"verify:{it['item_id']}#{v}"
            r = got[key]
            if r.error:
                picks.append(None)
            elif k:
                pick = fmt.parse_letter(r.text, k)
                picks.append(perms[key][pick] if pick is not None else None)
            else:
                picks.append(matches_key(r.text, it["answer_text"]))
        parsed = [p for p in picks if p is not None]
        agree = sum(p == (it["answer_index"] if k else True) for p in parsed)
        it["votes"] = [picks.count(i) for i in range(k)] if k else parsed
        it["verification"] = {"votes": n, "needed": need, "chance_pass": round(chance, 4)}
        it["verified"] = agree >= need
        counts["verified" if it["verified"] else "failed_verification"] += 1
        t = per_type[it["type"]]
        t["checked"] += 1
        t["passed"] += it["verified"]
        t["votes"] += n
        t["votes_unparsed"] += n - len(parsed)
        if parsed:  # agreement: the share of parsed votes that give the most common answer
            t["agreement_sum_permille"] += round(1000 * max(collections.Counter(parsed).values()) / len(parsed))
            t["unanimous"] += len(parsed) == n and len(set(parsed)) == 1
    return {"counts": counts, "per_type": {t: dict(c) for t, c in sorted(per_type.items())}}


def summary(per_type: dict) -> dict:
    """Pass rate and mean agreement per item type, from summed counts (shards add theirs)."""
    return {t: {"checked": c["checked"], "passed": c["passed"], "pass_rate": round(c["passed"] / c["checked"], 4),
                "agreement": round(c.get("agreement_sum_permille", 0) / 1000 / c["checked"], 4),
                "unanimous": c.get("unanimous", 0),
                "votes_unparsed": round(c.get("votes_unparsed", 0) / max(1, c.get("votes", 0)), 4)}
            for t, c in sorted(per_type.items()) if c.get("checked")}
