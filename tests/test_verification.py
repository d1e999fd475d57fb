"""Verification's decisions on scripted votes, through the real OpenAI client against a loopback server that answers
as scripted: the key (wherever the shuffle put it), a wrong option, the key in only some votes, nothing parseable,
open answers that match the key or not. And the protocol's numbers: votes scaled to the options keep the chance that
random answers pass a wrongly keyed item under the recipe's bound (a same-model majority of 3 passes half of the
two-option ones)."""

import collections
import hashlib
import json
import random
import logging
import re
import threading

import pytest

from harness.generation import verification
from harness.generation.backends import BackendOptions, make
from harness.generation.cache import RequestCache
from harness.generation.driver import Driver
from harness.generation.pipeline import Sampling
from harness.generation.prompts import Templates
from harness.plan import Plan

from conftest import base_recipe, serving, write_recipe

LETTER = re.compile(r"^([A-H])\. (.*)$", re.M)


class Script:
    """What the 'model' answers, by the marker word in the question; counts calls per question."""

    def __init__(self):
        self.calls = collections.Counter()
        self.temperatures = []
        self.lock = threading.Lock()

    def reply(self, prompt: str, temperature: float) -> str:
        question = re.search(r"Question: (.*)", prompt).group(1)
        with self.lock:
            self.calls[question] += 1
            n = self.calls[question]
            self.temperatures.append(temperature)
        options = dict((text, letter) for letter, text in LETTER.findall(prompt))
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


def _run(tmp_path, url, items, cfg):
    cache = RequestCache.for_stage(tmp_path, "verify", "scripted")
    opts = BackendOptions(model="scripted", base_url=url, concurrency=4, timeout=10, max_retries=0, batch_size=4,
                          chunk_size=None, engine={})
    driver = Driver(cache, lambda stack: make("openai", opts), logging.getLogger("test"))
    try:
        return verification.verify(items, cfg, driver, Templates(), Sampling(0.8, 0.95, 64, 3))
    finally:
        driver.close()
        cache.close()


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
