"""From seeds (or corpus passages) to parsed, screened, enriched and verified Q&A items.

Task-seeded: for each seed and sample index, the generator sees few-shot examples from the same subtask (the seed
first) and writes one new item of the seed's type; with probability `context_share` it is grounded in a corpus
passage. Unseeded control: diverse Q&A pairs written from a corpus passage alone. With prefill, each request
carries the answer's first label for the model to continue. Parsed items are screened (a grounded item gets its
passage back; items pointing at a passage they lack and near-copies of their seed go); then, optionally, an
explanation per item (enrichment) and verification (harness/generation/verification.py). Every item is keyed by
(seed or passage id, sample index), so reruns neither duplicate nor skip."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
import re
from dataclasses import dataclass

from harness.filters.text import words
from harness.generation import parse as fmt
from harness.generation.backends import Request
from harness.generation.driver import Driver, request_seed
from harness.generation.prompts import Templates

def describe(seed: dict) -> str:
    """What the seed's task tests, in words: recorded with the seed from the task's own definition."""
    return seed.get("description") or seed["task"].replace("_", " ")


@dataclass
class Sampling:
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    prefill: bool = False  # generation requests carry the start of their answer (GeneratorConfig.prefill)

    def request(self, key: str, prompt: str, temperature: float | None = None, max_tokens: int | None = None,
                start: str = ""):
        """`start`: the answer's first words, continued by the model when prefill is on."""
        messages = (("user", prompt),) + ((("assistant", start),) if start and self.prefill else ())
        return Request(key, messages, max_tokens or self.max_tokens,
                       self.temperature if temperature is None else temperature, self.top_p,
                       request_seed(self.seed, key))


def prompt_sha(r: Request) -> str:
    """A short hash of what the generator was shown (its messages, a prefill included)."""
    return hashlib.sha256(repr(r.messages).encode()).hexdigest()[:16]


def shard_of_id(ident: str, shards: int) -> int:
    """The shard of a seed or passage id: all samples of a seed land in one shard."""
    return int(hashlib.sha256(ident.encode()).hexdigest()[:8], 16) % shards


def shard_of(m: dict, shards: int) -> int:
    """The shard of a request, from its meta: by its seed (or passage)."""
    return shard_of_id(m["seed_id"] or m["passage_id"], shards)


def _in_shard(ident: str, shard: tuple[int, int] | None) -> bool:
    return shard is None or shard_of_id(ident, shard[1]) == shard[0]


def _pick_others(rng: random.Random, n_sub: int, own: int, k: int) -> list[int]:
    """k distinct positions of a subtask's list of n_sub seeds, never `own` (the seed itself), in O(k): positions
    are drawn from the n_sub - 1 others and those at or after `own` shifted by one."""
    k = min(k, n_sub - 1)
    if k <= 0:
        return []
    return [j + (j >= own) for j in rng.sample(range(n_sub - 1), k)]


def seeded_requests(seeds: list[dict], cfg: dict, tpl: Templates, passages, s: Sampling,
                    shard: tuple[int, int] | None = None) -> tuple[list[Request], dict]:
    """One request per (seed, sample) of the seeds in `shard` (index, count; None: all); meta maps request key ->
    what parsing needs. Every draw comes from the request's own RNG (seeded by its key), so a request is the same
    whichever shard builds it; the work is linear in the shard's requests. `passages`: a PassageFile (or a list),
    of which only the picked passages are read."""
    by_sub: dict[str, list[dict]] = collections.defaultdict(list)
    position: dict[str, int] = {}
    for seed in seeds:
        position[seed["seed_id"]] = len(by_sub[seed["subtask"]])
        by_sub[seed["subtask"]].append(seed)
    n_pass = len(passages) if passages is not None else 0
    planned = []  # (seed, k, key, shots, passage index or None): the draws first, then one read of the passages
    for seed in seeds:
        if not _in_shard(seed["seed_id"], shard):
            continue
        sub = by_sub[seed["subtask"]]
        for k in range(cfg["samples_per_seed"]):
            key = f"gen:{seed['seed_id']}#{k}"
            rng = random.Random(request_seed(s.seed, key))
            others = _pick_others(rng, len(sub), position[seed["seed_id"]], cfg["fewshot"] - 1)
            grounded = n_pass and rng.random() < cfg["context_share"]
            planned.append((seed, k, key, [seed] + [sub[j] for j in others], rng.randrange(n_pass) if grounded
                            else None))
    picked = _passages_at(passages, {p for *_, p in planned if p is not None})
    reqs, meta = [], {}
    for seed, k, key, shots, p in planned:
        kind = fmt.item_type(seed)
        passage = picked[p] if p is not None else None
        n_opt = len(seed["choices"]) if seed.get("choices") and kind != "yesno" else None
        prompt = tpl.render(f"similar_{kind}", task_description=describe(seed),
                            examples=[fmt.show(x, kind) for x in shots], n_options=n_opt or 0,
                            letters=fmt.LETTERS[:n_opt or 0], passage=passage["text"] if passage else None,
                            with_passage=bool(seed.get("context")))
        # the format's first label: "Passage:" only where the generator writes a passage of its own
        start = "Passage:" if kind == "yesno" and seed.get("context") and not passage else "Question:"
        reqs.append(s.request(key, prompt, start=start))
        meta[key] = {"prefill": reqs[-1].prefill, "request": key, "item_id": f"{seed['seed_id']}#{k}",
                     "seed_id": seed["seed_id"], "task": seed["task"], "subtask": seed["subtask"], "type": kind,
                     "n_options": n_opt, "passage_id": passage["passage_id"] if passage else None}
    return reqs, meta


def _passages_at(passages, indices: set[int]) -> dict[int, dict]:
    if not indices:
        return {}
    if hasattr(passages, "get_many"):
        return passages.get_many(indices)
    return {i: passages[i] for i in indices}


def unseeded_requests(passages, cfg: dict, tpl: Templates, s: Sampling,
                      shard: tuple[int, int] | None = None) -> tuple[list[Request], dict]:
    """Requests for the passages that fall in `shard`: a PassageFile reads only those, a list is filtered."""
    reqs, meta = [], {}
    mine = passages.where(lambda pid: _in_shard(pid, shard)) if hasattr(passages, "where") else \
        (p for p in passages if _in_shard(p["passage_id"], shard))
    for p in mine:
        for k in range(cfg["samples_per_seed"]):
            key = f"unseeded:{p['passage_id']}#{k}"
            reqs.append(s.request(key, tpl.render("unseeded_qa", passage=p["text"], n_pairs=cfg["pairs_per_passage"]),
                                  start="Question:"))
            meta[key] = {"prefill": reqs[-1].prefill, "request": key, "item_id": f"{p['passage_id']}#{k}",
                         "seed_id": None, "task": "unseeded", "subtask": "unseeded", "type": "open",
                         "n_options": None, "passage_id": p["passage_id"]}
    return reqs, meta


def parse_round(completions: dict, meta: dict, pairs: int = 0) -> tuple[list[dict], collections.Counter]:
    items, dropped = [], collections.Counter()
    for key in sorted(meta):
        c, m = completions[key], meta[key]
        if c.error:
            dropped["refused_by_server"] += 1
            continue
        c = dataclasses.replace(c, text=m.get("prefill", "") + c.text)  # the answer as a whole
        if pairs:
            parsed, bad = fmt.parse_pairs(c.text, pairs)
            dropped.update(bad)
            for j, it in enumerate(parsed):
                items.append({**m, **it, "item_id": f"{m['item_id']}.{j}", "n_options": it["choices"] and
                              len(it["choices"])})
            continue
        try:
            items.append({**m, **fmt.parse(c.text, m["type"], m["n_options"])})
        except fmt.Malformed as e:
            dropped[e.reason] += 1
    return items, dropped


# an item that points at a text: "according to the passage", "the text above", "in this article"...
_REFERS_TO_TEXT = re.compile(
    r"\b(?:according to|in|from|based on|of|by) (?:the|this|that) (?:passage|text|article|paragraph|excerpt|story|"
    r"document|author)\b|\b(?:the|this) (?:passage|text|article|paragraph|excerpt) (?:above|below|says|states|"
    r"mentions|describes|suggests)\b|\bthe (?:above|following|given) (?:passage|text|article|paragraph|excerpt)\b",
    re.I)


def _item_text(it: dict) -> str:
    return " ".join([it["question"], it["answer_text"], *(it.get("choices") or [])])


def _norm(text: str) -> str:
    return " ".join(words(text))


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def ground(items: list[dict], passages) -> None:
    """An item written from a passage carries it (the generator saw it; the parser reads only the item), in place
    of any copy of it the generator wrote: a grounded task-seeded item, and every pair of the unseeded control."""
    wanted = {it["passage_id"] for it in items if it.get("passage_id")}
    if not wanted:
        return
    found = passages.by_id(wanted) if hasattr(passages, "by_id") else \
        {p["passage_id"]: p for p in passages if p["passage_id"] in wanted}
    for it in items:
        if it.get("passage_id"):
            it["context"] = found[it["passage_id"]]["text"]


def screen(items: list[dict], seeds: dict[str, dict]) -> tuple[list[dict], collections.Counter]:
    """Drop items that refer to a passage they do not carry, and near-copies of their seed: half or more of its
    options verbatim, or a passage taken from it (half of the passage's word 8-grams in the seed's). The question
    itself is compared with every seed by the filter's near-duplicate check."""
    kept, dropped = [], collections.Counter()
    for it in items:
        seed = seeds.get(it.get("seed_id") or "")
        if not it.get("context") and _REFERS_TO_TEXT.search(_item_text(it)):
            dropped["refers_to_missing_passage"] += 1
            continue
        if seed and it["type"] in ("mc", "completion") and seed.get("choices"):
            same = {_norm(c) for c in it["choices"]} & {_norm(c) for c in seed["choices"]}
            if 2 * len(same) >= len(it["choices"]):
                dropped["copied_seed_options"] += 1
                continue
        if seed and it.get("context") and seed.get("context") and not it.get("passage_id"):
            mine = _shingles(it["context"], 8)
            if 2 * len(mine & _shingles(seed["context"], 8)) >= len(mine):
                dropped["copied_seed_passage"] += 1
                continue
        kept.append(it)
    return kept, dropped


def near_copy_rate(screened: collections.Counter, parsed: int) -> float:
    """The share of parsed items that copied their seed's options or passage (the screen dropped them)."""
    return round((screened["copied_seed_options"] + screened["copied_seed_passage"]) / max(1, parsed), 4)


def enrich(items: list[dict], driver: Driver, tpl: Templates, s: Sampling) -> collections.Counter:
    reqs = [s.request(f"enrich:{it['item_id']}",
                      tpl.render("enrich", item=fmt.show(it, it["type"], with_passage=True), answer=it["answer_text"]),
                      max_tokens=96) for it in items]
    got = driver.run("enrich", reqs)
    bad = collections.Counter()
    for it, r in zip(items, reqs):
        text = " ".join(got[r.key].text.split())
        ok = not got[r.key].error and 20 <= len(text) <= 600 and "Question:" not in text
        it["explanation"] = text if ok else None
        bad["explanation_missing" if not ok else "explained"] += 1
    return bad
