"""Verification's decisions on scripted votes, through the real OpenAI client against a loopback server that answers
as scripted: the key (wherever the shuffle put it), a wrong option, the key in only some votes, nothing parseable,
open answers that match the key or not. And the protocol's numbers: votes scaled to the options keep the chance that
random answers pass a wrongly keyed item under the recipe's bound (a same-model majority of 3 passes half of the
two-option ones)."""

import collections
import contextlib
import hashlib
import json
import random
import logging
import re
import threading

import pytest

from harness.generation import parse as fmt
from harness.generation import pipeline, verification
from harness.generation.backends import BackendOptions, make
from harness.generation.cache import RequestCache
from harness.generation.driver import Driver
from harness.generation.pipeline import Sampling
from harness.generation.prompts import Templates
from harness.plan import Plan
from harness.seeds import render

from conftest import Reply, base_recipe, serving, write_recipe

LETTER = re.compile(r"^([A-H])\. (.*)$", re.M)


class Script:
    """What the 'model' answers, by the marker word in the question; counts calls per question."""

    def __init__(self):
        self.calls = collections.Counter()
        self.temperatures = []
        self.key_letters = []  # where each vote with options was shown the key
        self.lock = threading.Lock()

    def reply(self, prompt: str, temperature: float) -> str:
        question = re.search(r"Question: (.*)", prompt).group(1)
        with self.lock:
            self.calls[question] += 1
            n = self.calls[question]
            self.temperatures.append(temperature)
        options = dict((text, letter) for letter, text in LETTER.findall(prompt))
        if "the key" in options:
            with self.lock:
                self.key_letters.append(options["the key"])
        if "always-right" in question:
            return options["the key"]
        if "always-wrong" in question:
            return f"{options['a wrong one']}."
        if "mostly-right" in question:  # the key in all votes but one
            return options["the key"] if n > 1 else options["a wrong one"]
        if "gibberish" in question:
            return "hmm, hard to say"
        if "open-right" in question:
            return "The answer is the Elm river."
        if "open-wrong" in question:
            return "Mount Blanc"
        raise AssertionError(question)


@pytest.fixture
def server():
    script = Script()
    with serving(script.reply) as url:
        yield script, url


def _item(marker: str, options: int) -> dict:
    if not options:
        return {"item_id": f"{marker}#0", "type": "open", "question": f"{marker}: which river floods in spring?",
                "choices": None, "answer_index": None, "answer_text": "the Elm river", "context": "The Elm floods."}
    choices = ["the key", "a wrong one"] + [f"filler {i}" for i in range(options - 2)]
    kind = "yesno" if options == 2 else "mc"
    return {"item_id": f"{marker}{options}#0", "type": kind, "question": f"{marker} question with {options} options",
            "choices": choices, "answer_index": 0, "answer_text": "the key", "context": None}


@contextlib.contextmanager
def _driver(tmp_path, url, name="verify"):
    """A real Driver, request cache and openai client against `url`; all closed on exit."""
    cache = RequestCache.for_stage(tmp_path, name, "scripted")
    opts = BackendOptions(model="scripted", base_url=url, concurrency=4, timeout=10, max_retries=0, batch_size=4,
                          chunk_size=None, engine={})
    driver = Driver(cache, lambda stack: make("openai", opts), logging.getLogger("test"))
    try:
        yield driver
    finally:
        driver.close()
        cache.close()


def _run(tmp_path, url, items, cfg):
    with _driver(tmp_path, url) as driver:
        return verification.verify(items, cfg, driver, Templates(), Sampling(0.8, 0.95, 64, 3))


def test_scripted_votes_give_the_documented_decisions(tmp_path, server):
    script, url = server
    items = [_item(m, k) for m in ("always-right", "always-wrong", "mostly-right", "gibberish") for k in (2, 4)]
    items += [_item("open-right", 0), _item("open-wrong", 0)]
    out = _run(tmp_path, url, items, verification.VerificationConfig())
    got = {it["item_id"]: it["verified"] for it in items}
    assert got == {"always-right2#0": True, "always-right4#0": True, "always-wrong2#0": False,
                   "always-wrong4#0": False, "mostly-right2#0": False, "mostly-right4#0": False,
                   "gibberish2#0": False, "gibberish4#0": False, "open-right#0": True, "open-wrong#0": False}
    # votes scaled to the options: two options need 4 of 4, four options 3 of 3, an open answer 2 of 3
    by_id = {it["item_id"]: it for it in items}
    assert by_id["always-right2#0"]["verification"] == {"votes": 4, "needed": 4, "chance_pass": 0.0625}
    assert by_id["always-right4#0"]["verification"]["votes"] == 3 and by_id["always-right4#0"]["votes"] == [3, 0, 0, 0]
    assert by_id["mostly-right4#0"]["votes"] == [2, 1, 0, 0]  # the key found wherever the shuffle put it
    assert by_id["open-right#0"]["verification"] == {"votes": 3, "needed": 2, "chance_pass": 0.0}
    assert script.calls["always-right question with 2 options"] == 4 and set(script.temperatures) == {0.2}
    # each vote sees the options in its own order: the key written first is shown at every letter
    assert len(script.key_letters) == 28 and set(script.key_letters) == {"A", "B", "C", "D"}, script.key_letters
    assert out["counts"] == {"verified": 3, "failed_verification": 7}
    per = out["per_type"]
    assert per["yesno"]["checked"] == 4 and per["yesno"]["passed"] == 1 and per["open"]["passed"] == 1
    assert per["mc"]["votes_unparsed"] == 3 and per["yesno"]["votes_unparsed"] == 4  # the gibberish ones
    s = verification.summary(per)
    assert s["mc"]["pass_rate"] == 0.25 and s["mc"]["unanimous"] == 2  # always-right, always-wrong


def test_fixed_votes_and_options_only(tmp_path, server):
    _, url = server
    items = [_item("mostly-right", 4), _item("open-right", 0)]
    # five votes on four options: 3 agreeing would pass random answers 10.4% of the time, so 4 are needed and one
    # dissent is allowed
    out = _run(tmp_path, url, items, verification.VerificationConfig(votes=5, open_answers=False))
    assert items[0]["verified"] is True and items[0]["verification"]["needed"] == 4 and items[0]["votes"][0] == 4
    assert items[1]["verified"] is None and out["counts"]["unverified"] == 1


def test_protocol_bounds_the_chance_that_random_answers_pass():
    # the finding: three same-model votes, majority rule, a wrongly keyed two-option item: half pass
    assert verification.chance_pass(3, 2, 2) == 0.5
    for options in range(2, 9):
        n, need, chance = verification.requirement(options, None, 0.1)
        assert chance <= 0.1 and need > n / 2 and 3 <= n <= verification.MAX_VOTES
        assert chance == pytest.approx(verification.chance_pass(n, need, options))
    assert verification.requirement(2, None, 0.1)[:2] == (4, 4)
    assert verification.requirement(4, None, 0.1)[:2] == (3, 3)
    assert verification.requirement(4, None, 0.2)[:2] == (3, 2)


@pytest.mark.parametrize("reply,key,ok", [
    ("The answer is the Elm river.", "Elm river", True), ("elm", "the Elm river", True),
    ("Mount Blanc", "the Elm river", False), ("", "x", False), ("42\nbecause ...", "42", True),
    ("carbon dioxide and water vapour in the air", "carbon dioxide", True),
])
def test_open_answers_match_by_normalised_words(reply, key, ok):
    assert verification.matches_key(reply, key) is ok


GOOD = "The key is right: it is the only option that names what the question asks about."
EXPLANATIONS = {  # the explainer's reply, by the marker word in the item's question
    "good": f"  {GOOD[:40]}\n   {GOOD[40:]}  ",  # whitespace is collapsed: kept as GOOD
    "short": "x" * 19,  # under 20 characters
    "shortest": "y" * 20,
    "longest": "z" * 600,
    "long": "w" * 601,  # over 600 characters
    "leaky": "It is the key because of the river. Question: which river floods in autumn?",  # writes a new item
    "refused": Reply(400, "prompt too long"),  # refused by the server
}


def test_enrichment_keeps_only_usable_explanations_and_renders_them_before_the_answer(tmp_path):
    """enrich asks for one explanation per item (the item and its answer shown) and keeps it only if the server
    answered, it is 20 to 600 characters long (whitespace collapsed) and it writes no new question; the rendered
    text shows it before the answer, in both layouts, and an item without one renders without it."""
    asked = {}

    def reply(prompt, temperature):
        marker = re.search(r"Question: (\w+) question", prompt).group(1)
        asked[marker] = prompt
        return EXPLANATIONS.get(marker, GOOD)

    items = [_item(m, 4) for m in EXPLANATIONS] + [{**_item("plain", 0), "item_id": "plain-open#0",
                                                    "question": "plain question: which river floods in spring?"}]
    with serving(reply) as url, _driver(tmp_path, url, "enrich") as driver:
        counts = pipeline.enrich(items, driver, Templates(), Sampling(0.8, 0.95, 64, 3))
        assert driver.counts["generated"] == len(items) and driver.counts["refused"] == 1
    assert 'explain why "the key" is the correct answer' in asked["good"] and "A. the key" in asked["good"]
    assert "Passage: The Elm floods." in asked["plain"], "the passage an item is about is shown"
    got = {it["item_id"]: it["explanation"] for it in items}
    assert got == {"good4#0": GOOD, "short4#0": None, "shortest4#0": "y" * 20, "longest4#0": "z" * 600,
                   "long4#0": None, "leaky4#0": None, "refused4#0": None,
                   "plain-open#0": GOOD}
    assert counts == {"explained": 4, "explanation_missing": 4}

    for layout in ("mc", "qa"):
        for it in items:
            (doc,), _ = render.render([it], layout, 1, seed=1)
            answer = doc.index("\nAnswer: ")
            if it["explanation"] is None:
                assert "Explanation:" not in doc, doc
                continue
            assert doc[answer - len(it["explanation"]) - len("\nExplanation: "):answer] == \
                f"\nExplanation: {it['explanation']}", (layout, doc)
            assert doc.count("Explanation:") == 1 and doc.index("Question: ") < answer


class Counted:
    """A scripted model that counts the requests it answers (from the server's threads)."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def reply(self, prompt: str, temperature: float) -> str:
        with self.lock:
            self.calls += 1
        return self.answer(prompt)


class Writer(Counted):
    """A scripted generator: a new multiple-choice item per request, its words drawn from the prompt's hash (so
    near-duplicate filtering keeps them apart), the key's option marked for the scripted verifier."""

    def answer(self, prompt: str) -> str:
        n = int(re.search(r"the question, (\d+) different options", prompt).group(1))
        rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
        vocab = ["river", "stone", "cloud", "metal", "forest", "engine", "planet", "seed", "magnet", "glacier",
                 "valley", "copper", "battery", "insect", "harbour", "lantern", "orbit", "crystal", "meadow", "tide"]
        topic = " ".join(rng.sample(vocab, 6))
        tricky = rng.random() < 0.3  # the verifier will miss these
        options = [f"{rng.choice(vocab)} {rng.choice(vocab)} {'correct' if i == 1 else 'wrong'}" for i in range(n)]
        return (f"Question: Which {'tricky ' if tricky else ''}statement about {topic} holds?\n"
                + "\n".join(f"{'ABCDEFGH'[i]}. {o}" for i, o in enumerate(options)) + "\nAnswer: B")


class Judge(Counted):
    """A scripted verifier: the option marked correct, wherever the shuffle put it - except on tricky items."""

    def answer(self, prompt: str) -> str:
        assert "Reply with the letter" in prompt and "Answer:" not in prompt, prompt  # no key shown
        options = dict((text, letter) for letter, text in LETTER.findall(prompt))
        pick = "correct" if "tricky" not in prompt else "wrong"
        return next(letter for text, letter in options.items() if text.endswith(pick))


def test_a_separate_verifier_votes_and_lineage_shows_its_votes(tmp_path, suite_store, cli):
    """generator and verifier on two endpoints: the generator only writes, the verifier only votes (after the
    generator's backend is closed), each item's votes and protocol are kept and `harness show` prints them."""
    writer, judge = Writer(), Judge()
    with serving(writer.reply) as w_url, serving(judge.reply) as j_url:
        r = base_recipe(tmp_path, store=str(suite_store / "runs"), experiment="twomodels",
                        synthetic={"tsqa": {"kind": "task_seeded", "tasks": ["offline_arc_easy"], "per_task_cap": 12,
                                            "samples_per_seed": 1, "fewshot": 1}},
                        generator={"backend": "openai", "server": w_url, "model": "scripted-writer",
                                   "max_tokens": 64, "max_retries": 0, "concurrency": 8},
                        verifier={"backend": "openai", "server": j_url, "model": "scripted-judge", "max_retries": 0,
                                  "concurrency": 8})
        r["arms"].append({"name": "tsqa", "mix": {"web": 0.9, "tsqa": 0.1}})
        code, out = cli("run", write_recipe(tmp_path / "r.yaml", r), "--only", "filter/tsqa")
        assert code == 0, out
    plan = Plan.load(suite_store / "runs" / "twomodels" / "plan.json")
    gen = plan.by_id("generate/tsqa")
    m = plan.store.manifest("generate", gen.digest)["result"]
    assert writer.calls == 12 and m["requests"]["generated"] == 12
    assert m["verifier"]["model_id"] == "server:scripted-judge" or m["verifier"]["model_id"].endswith(
        "server:scripted-judge")
    items = [json.loads(line) for line in (plan.dir(gen) / "items.jsonl").read_text().splitlines()]
    per = m["verification_by_type"]["mc"]
    assert judge.calls == m["verifier"]["requests"]["generated"] == 3 * per["checked"] > 0
    assert 0 < per["passed"] < per["checked"], "the tricky items fail"
    assert len(items) == per["passed"] and all(it["verified"] and "tricky" not in it["question"] for it in items)
    assert all(it["votes"][it["answer_index"]] == 3 and it["verification"]["needed"] == 3 for it in items)
    code, out = cli("show", "twomodels", items[0]["item_id"], "--store", str(suite_store / "runs"))
    assert code == 0, out
    assert "kept" in out and "votes per option" in out and "(3 of 3 needed; random answers pass" in out
    assert "passed: parsed, screened, verified, deduplicated, decontaminated" in out


class ItemWriter(Counted):
    """A scripted generator that writes one well-formed item of the kind each task-seeded prompt asks for: as many
    options (or endings) as the prompt names, a yes/no answer (after a passage of its own where asked), or a short
    answer; continuing the prefilled start of the answer ("Question:" or "Passage:"). Its words come from the
    prompt's hash (so near-duplicate filtering keeps the items apart)."""

    VOCAB = ["river", "stone", "cloud", "metal", "forest", "engine", "planet", "seed", "magnet", "glacier", "valley",
             "copper", "battery", "insect", "harbour", "lantern", "orbit", "crystal", "meadow", "tide", "pebble",
             "falcon", "quartz", "walnut", "violin", "saddle", "compass", "thimble", "kettle", "marble"]

    def __init__(self):
        super().__init__()
        self.prefills = collections.Counter()

    def reply(self, messages, temperature):
        with self.lock:
            self.calls += 1
            start = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
            self.prefills[start] += 1
        prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())

        def w(k: int) -> str:
            return " ".join(rng.sample(self.VOCAB, k))

        if "Example yes/no questions" in prompt:
            own = '"Passage:" with a short passage' in prompt
            text = (f"Passage: The {w(3)} lies near the {w(3)}. Every {w(2)} is kept apart from it.\n" if own else "") \
                + f"Question: is the {w(4)} older than the {w(3)}?\nAnswer: {rng.choice(['yes', 'no'])}"
        elif m := re.search(r"(\d+) different (?:options|endings) ([A-H]) to ([A-H])", prompt):
            n = int(m.group(1))
            assert "ABCDEFGH"[n - 1] == m.group(3), prompt
            options = [f"the {w(2)} {i}" for i in range(n)]
            text = f"Question: Which {w(5)} would the {w(2)} need?\n" + \
                "\n".join(f"{'ABCDEFGH'[i]}. {o}" for i, o in enumerate(options)) + \
                f"\nAnswer: {'ABCDEFGH'[rng.randrange(n)]}"
        else:
            assert "Example questions with short answers" in prompt, prompt
            text = f"Question: What does the {w(4)} hold?\nAnswer: the {w(2)}"
        assert text.startswith(start), (start, text)
        return text[len(start):]


def test_live_sharded_task_seeded_generation_parses_items_of_each_seeds_kind(tmp_path, suite_store, cli):
    """The generate stage live (nothing from the request cache), split into two shards, against a scripted generator
    that continues each prefilled request with a well-formed item of the kind asked for: every request is answered,
    items are parsed, each of its seed's type and option count with its answer among its options and its seed in
    the stage's shard; the shards' counts add up to the set and the filter merges them."""
    writer = ItemWriter()
    tasks = ["offline_arc_easy", "offline_boolq", "offline_winogrande"]
    with serving(writer.reply, messages=True) as url:
        r = base_recipe(tmp_path, store=str(suite_store / "runs"), experiment="liveshards",
                        synthetic={"livetsqa": {"kind": "task_seeded", "tasks": tasks, "per_task_cap": 3,
                                                "samples_per_seed": 2, "fewshot": 2, "enrich": False,
                                                "verification": {"enabled": False}}},
                        generator={"backend": "openai", "server": url, "model": "scripted-live-item-writer",
                                   "max_tokens": 96, "max_retries": 0, "concurrency": 8, "prefill": True,
                                   "shards": 2})
        r["arms"].append({"name": "livetsqa", "mix": {"web": 0.9, "livetsqa": 0.1}})
        code, out = cli("run", write_recipe(tmp_path / "r.yaml", r), "--only", "filter/livetsqa")
        assert code == 0, out
    plan = Plan.load(suite_store / "runs" / "liveshards" / "plan.json")
    seeds_spec = plan.by_id("seeds/livetsqa")
    seeds = {s["seed_id"]: s for s in map(json.loads, (plan.dir(seeds_spec) / "seeds.jsonl").read_text().splitlines())}
    kinds = {sid: fmt.item_type(s) for sid, s in seeds.items()}
    assert len(seeds) == 9 and set(kinds.values()) == {"mc", "completion", "yesno"}
    assert len({len(s["choices"]) for s in seeds.values() if kinds[s["seed_id"]] != "yesno"}) > 1, \
        "seeds with different option counts"
    assert writer.calls == 2 * len(seeds) and set(writer.prefills) == {"Question:", "Passage:"}

    results, shard_items = [], []
    for i in range(2):
        spec = plan.by_id(f"generate/livetsqa/shard{i}")
        m = plan.store.manifest("generate", spec.digest)["result"]
        results.append(m)
        assert m["shard"] == [i, 2] and m["requests"]["cached"] == m["requests"]["found_in_other_caches"] == 0
        assert m["requests"]["generated"] == m["requests"]["requests"] == m["generations"] > 0, "asked live"
        assert m["parsed"] == m["generations"] and not m["malformed"], m["malformed"]
        assert m["kept"] == m["after_screen"] > 0
        mine = {sid for sid in seeds if pipeline.shard_of_id(sid, 2) == i}  # a shard's seeds: split by seed id
        gens = [json.loads(line) for line in (plan.dir(spec) / "generations.jsonl").read_text().splitlines()]
        assert {g["seed_id"] for g in gens} == mine and m["seeds"] == len(mine) > 0
        items = [json.loads(line) for line in (plan.dir(spec) / "items.jsonl").read_text().splitlines()]
        assert len(items) == m["kept"] and [it["item_id"] for it in items] == sorted(it["item_id"] for it in items)
        for it in items:
            seed = seeds[it["seed_id"]]
            assert it["seed_id"] in mine and it["task"] == seed["task"], it
            assert it["type"] == kinds[it["seed_id"]], (it, seed)
            n = 2 if it["type"] == "yesno" else len(seed["choices"])
            assert len(it["choices"]) == n and it["choices"][it["answer_index"]] == it["answer_text"], (it, seed)
            assert it["provenance"]["generator"].endswith("scripted-live-item-writer")
            if it["type"] == "yesno":
                assert it["answer_text"] in ("yes", "no") and it["context"], it
        shard_items.append(items)
    assert {it["type"] for items in shard_items for it in items} == {"mc", "completion", "yesno"}
    assert sum(m["generations"] for m in results) == 2 * len(seeds)
    assert sum(m["seeds"] for m in results) == len(seeds)

    fspec = plan.by_id("filter/livetsqa")
    f = plan.store.manifest("filter", fspec.digest)["result"]
    assert f["generated"]["shards"] == 2 and f["generated"]["parsed"] == sum(m["parsed"] for m in results)
    assert f["input"] == sum(m["kept"] for m in results)
    assert f["kept"] + sum(f["deduplicated"].values()) + f["decontaminated"] == f["input"] and f["kept"] > 0
    merged = [json.loads(line) for line in (plan.dir(fspec) / "items.jsonl").read_text().splitlines()]
    by_id = {it["item_id"]: it for items in shard_items for it in items}
    assert len(merged) == f["kept"] and [it["item_id"] for it in merged] == sorted(it["item_id"] for it in merged)
    assert all(it["item_id"] in by_id and it["answer_text"] == by_id[it["item_id"]]["answer_text"] for it in merged)
    assert {it["seed_id"] for it in merged} & {it["seed_id"] for it in shard_items[0]} and \
        {it["seed_id"] for it in merged} & {it["seed_id"] for it in shard_items[1]}, "both shards' items"
