"""Strict parsing of generator outputs (every malformed output dropped with its reason), item types, the plan of
a recipe with generation (templates hashed into the stage), without running a model."""

import re

import pytest

from harness.generation import parse as fmt
from harness.plan import build
from harness.recipe import load
from harness.seeds import render
from harness.store import Store

from conftest import base_recipe, write_recipe


def test_parse_each_format():
    mc = fmt.parse("Sure, here it is:\nQuestion: Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\n"
                   "C. helium\nAnswer: B", "mc", 3)
    assert mc["choices"] == ["oxygen", "carbon dioxide", "helium"] and mc["answer_index"] == 1
    yn = fmt.parse("Passage: Whales are mammals.\nQuestion: is a whale a fish?\nAnswer: No, it is not.", "yesno")
    assert yn["context"] == "Whales are mammals." and yn["answer_text"] == "no" and yn["answer_index"] == 1
    op = fmt.parse("Question: Who wrote Hamlet?\nAnswer: William Shakespeare", "open")
    assert op["answer_text"] == "William Shakespeare" and op["choices"] is None
    first = fmt.parse("Question: What is two plus two?\nA. 3\nB. 4\nAnswer: B\n\nQuestion: And three?\nA. 1\n"
                      "B. 3\nAnswer: B", "mc", 2)
    assert first["question"] == "What is two plus two?" and first["answer_text"] == "4"


@pytest.mark.parametrize("text,kind,n,reason", [
    ("", "mc", 4, "empty"),
    ("Options:\n1. What is the primary purpose?", "mc", 4, "no_question"),
    ("Question: What is the capital of France?\nA. Paris\nB. Rome\nC. Oslo\nD. Bern", "mc", 4, "no_answer"),
    ("Question: What is the capital of France?\nA. Paris\nB. Paris\nAnswer: A", "mc", 2,
     "duplicate_or_empty_options"),
    ("Question: What is the capital of France?\nA. Paris\nC. Rome\nAnswer: A", "mc", 2, "bad_options"),
    ("Question: What is the capital of France?\nA. Paris\nB. Rome\nAnswer: E", "mc", 2, "answer_not_an_option"),
    ("Question: What is the capital of France?\nA. Paris\nB. Rome\nC. Oslo\nAnswer: A", "mc", 4,
     "wrong_number_of_options"),
    ("Question: Is the sky blue today?\nAnswer: maybe", "yesno", None, "answer_not_yes_no"),
    ("Question: Hi?\nAnswer: yes", "yesno", None, "question_too_short"),
    ("Question: " + "long " * 400 + "\nAnswer: x", "open", None, "too_long"),
])
def test_malformed_outputs_are_dropped_with_a_reason(text, kind, n, reason):
    with pytest.raises(fmt.Malformed) as e:
        fmt.parse(text, kind, n)
    assert e.value.reason == reason


def test_pairs_letters_and_types():
    items, bad = fmt.parse_pairs("1. Question: Who gave the address?\nAnswer: The president.\n\nQuestion: When?\n"
                                 "Question: Was it long?\nAnswer: yes", 3)
    assert [i["question"] for i in items] == ["Who gave the address?", "Was it long?"] and bad == ["no_answer"]
    assert fmt.parse_letter("The answer is C.", 4) == 2 and fmt.parse_letter("E", 4) is None
    assert fmt.item_type({"question": "Is it?", "choices": ["yes", "no"]}) == "yesno"
    assert fmt.item_type({"question": "Which one?", "choices": ["a", "b"]}) == "mc"
    assert fmt.item_type({"question": "A man walks in and", "choices": ["a", "b"]}) == "completion"
    assert fmt.item_type({"question": "Who?", "choices": None}) == "open"


def test_plan_with_generation_and_template_edit(tmp_path):
    tpl = tmp_path / "templates"
    tpl.mkdir()
    syn = {"tsqa": {"kind": "task_seeded", "tasks": ["offline_arc_easy"]},
           "uqa": {"kind": "unseeded_qa", "context_corpus": "qa"}}
    r = base_recipe(tmp_path, synthetic=syn, generator={"templates": str(tpl)},
                    decontamination={"corpus_report": True})
    r["arms"] += [{"name": "ts", "mix": {"web": 0.9, "tsqa": 0.1}}, {"name": "un", "mix": {"web": 0.9, "uqa": 0.1}}]
    path = write_recipe(tmp_path / "r.yaml", r)
    plan = build(load(path), Store(tmp_path / "runs"))
    ids = [s.id for s in plan.stages]
    for sid in ("seeds/tsqa", "generate/tsqa", "filter/tsqa", "render/tsqa", "generate/uqa", "filter/uqa",
                "decontam_index", "contamination/web", "contamination/qa"):
        assert sid in ids, sid
    assert "seeds/uqa" not in ids and plan.by_id("filter/uqa").deps == {"items": "generate/uqa",
                                                                        "index": "decontam_index"}
    assert plan.by_id("generate/tsqa").config["templates"].keys() >= {"similar_mc", "verify"}
    # an edited template (a copy in the recipe's template folder overrides the built-in one) regenerates the
    # seeded set only
    from harness.generation.prompts import BUILTIN

    (tpl / "similar_mc.j2").write_text((BUILTIN / "similar_mc.j2").read_text() + "\nBe concise.")
    plan2 = build(load(path), Store(tmp_path / "runs"))
    changed = {s.id for s, t in zip(plan.stages, plan2.stages) if s.digest != t.digest}
    assert "generate/tsqa" in changed and "generate/uqa" not in changed and "decontam_index" not in changed


def _write_answers(path: str, journal: str, writer: int, n: int) -> None:
    from pathlib import Path

    from harness.generation.backends import Completion, Request
    from harness.generation.cache import RequestCache

    cache = RequestCache(Path(path), "model", journal)
    for i in range(n):
        cache.put(Request(f"w{writer}#{i}", (("user", f"q{writer}-{i}"),), 8, 0.5, 1.0, i),
                  Completion(f"a{writer}-{i}", 3, 2, "stop"))
    cache.close()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_request_cache_concurrent_writers(tmp_path, journal):
    """Generation shards write one cache at once: WAL on a local disk, a rollback journal on a network filesystem
    (chosen by the filesystem type); nothing is lost either way."""
    import multiprocessing as mp
    from pathlib import Path

    from harness.generation.backends import Request
    from harness.generation.cache import RequestCache, filesystem_type

    assert filesystem_type(Path("/proc")) == "proc" and filesystem_type(tmp_path) not in ("proc", "unknown")
    path = tmp_path / "requests.sqlite"
    procs = [mp.get_context("spawn").Process(target=_write_answers, args=(str(path), journal, w, 40))
             for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = RequestCache(path, "model", journal)
    assert cache.db.execute("PRAGMA journal_mode").fetchone()[0] == journal
    got = [cache.get(Request(f"w{w}#{i}", (("user", f"q{w}-{i}"),), 8, 0.5, 1.0, i)) for w in range(3)
           for i in range(40)]
    assert all(c is not None and c.text == f"a{w}-{i}" for c, (w, i) in zip(got, [(w, i) for w in range(3)
                                                                               for i in range(40)]))
    cache.close()


def test_request_cache_journal_follows_the_filesystem(tmp_path, monkeypatch):
    """The default journal: WAL where the store's filesystem is local (SQLite says so too), the rollback journal
    where it is a network filesystem; the type is the one of the longest mount point above the folder."""
    import contextlib
    import sqlite3
    from pathlib import Path

    import psutil

    from harness.generation import cache as rc

    def innermost(path: Path) -> str:  # psutil's reading of the mount table: the longest mount point above `path`
        target = str(path.resolve())
        above = [p for p in psutil.disk_partitions(all=True)
                 if target == p.mountpoint or target.startswith(p.mountpoint.rstrip("/") + "/")]
        return max(above, key=lambda p: len(p.mountpoint)).fstype

    fs = rc.filesystem_type(tmp_path)
    nested = [Path("/proc/self/fd")] + [Path(p) for p in ("/dev/shm", "/sys/fs/cgroup") if Path(p).is_dir()]
    for path in [tmp_path, *nested]:  # mounts inside mounts: /proc (and /dev/shm in /dev) inside /
        assert rc.filesystem_type(path) == innermost(path), path
    assert rc.filesystem_type(Path("/proc/self/fd")) == "proc"
    assert fs not in rc.NETWORK_FS, f"{tmp_path} is on {fs}: this test needs a local temporary folder"
    local = rc.RequestCache(tmp_path / "local" / "requests.sqlite", "model")
    try:
        assert local.journal == "wal" and local.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        local.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "local" / "requests.sqlite")) as db:  # WAL stays in the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"nfs", "nfs4", "lustre", "gpfs", "cifs", "beegfs"} <= rc.NETWORK_FS
    seen = []
    monkeypatch.setattr(rc, "filesystem_type", lambda path: seen.append(path) or "nfs4")
    shared = rc.RequestCache(tmp_path / "shared" / "requests.sqlite", "model")
    try:
        assert seen == [tmp_path / "shared"], "decided from the folder that holds the file"
        assert shared.journal == "delete" and shared.db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        shared.close()
    forced = rc.RequestCache(tmp_path / "forced" / "requests.sqlite", "model", journal="wal")  # a caller may force it
    try:
        assert forced.journal == "wal" and forced.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        forced.close()


def test_openai_client_retries_429_5xx_and_timeouts_but_not_400():
    """The same request answered 429, then 503, then 200 gets the 200's text; one that times out once is asked
    again; each retry is counted; a 400 is the request's own fault: recorded at once, not retried; a server that
    keeps failing stops the stage with a clear error after max_retries."""
    import collections
    import threading

    from harness.generation.backends import BackendOptions, GenerationError, Request, make

    from conftest import Reply, serving

    calls, lock = collections.Counter(), threading.Lock()
    script = {"busy": [Reply(429, "slow down"), Reply(503, "overloaded"), "the third answer"],
              "slow": [Reply(text="too late", delay=5.0), "in time"],
              "bad": [Reply(400, "prompt too long")] + ["never asked"] * 5,
              "down": [Reply(502, "bad gateway")] * 5}

    def reply(prompt, temperature):
        with lock:
            calls[prompt] += 1
            return script[prompt][calls[prompt] - 1]

    def ask(backend, prompt):
        got = []
        backend.generate([Request(prompt, (("user", prompt),), 16, 0.0, 1.0, 1)], lambda r, c: got.append(c))
        assert len(got) == 1
        return got[0]

    with serving(reply) as url:
        backend = make("openai", BackendOptions(model="scripted", base_url=url, concurrency=2, timeout=1.0,
                                                max_retries=3))
        backend.backoff_base = 0.01  # no recipe option sets the back-off: the class attribute, on this instance
        busy = ask(backend, "busy")
        assert busy.text == "the third answer" and busy.error is None and calls["busy"] == 3
        assert backend.retries == 2
        slow = ask(backend, "slow")
        assert slow.text == "in time" and calls["slow"] == 2 and backend.retries == 3
        bad = ask(backend, "bad")
        assert calls["bad"] == 1 and backend.retries == 3, "a 400 is not retried"
        assert bad.text == "" and bad.error == "HTTP 400: prompt too long"
        with pytest.raises(GenerationError, match=r"failed request down after 3 retries: HTTP 502: bad gateway"):
            ask(backend, "down")
        assert calls["down"] == 4 and backend.retries == 6

def _seed(i: int, task: str = "t", **kw) -> dict:
    return {"seed_id": f"{task}/train/{i}", "task": task, "subtask": task, "description": "science",
            "question": f"Which of these is item number {i}?", "context": None,
            "choices": [f"alpha {i}", f"beta {i}", f"gamma {i}", f"delta {i}"], "answer_index": 0,
            "answer_text": f"alpha {i}", **kw}


def test_grounded_items_carry_their_passage_and_copies_are_screened():
    """The generator sees a passage, the parser reads only the item: the stage puts the passage back, and the
    rendered text holds it. An item pointing at a passage it lacks, or copying its seed's options or passage, goes;
    an item pointing at the passage it carries stays. The near-copy rate counts the copies among parsed items."""
    from harness.generation import pipeline
    from harness.generation.backends import Completion
    from harness.generation.prompts import Templates

    seed_text = "The Elm is a river of the northern plain that floods every spring when the snow melts on its hills."
    seeds = [_seed(i) for i in range(4)] + [  # two yes/no seeds about a passage: their items write one
        _seed(i, question=f"Does the river of item {i} flood?", choices=["yes", "no"], answer_text="yes",
              context=f"{seed_text} Seed {i}.") for i in (4, 5)]
    passages = [{"passage_id": f"doc{i}.p0", "text": f"Passage {i}: the river Elm floods every spring."}
                for i in range(3)]
    cfg = {"samples_per_seed": 2, "fewshot": 1, "context_share": 0.5}
    reqs, meta = pipeline.seeded_requests(seeds, cfg, Templates(), passages, pipeline.Sampling(0.8, 0.95, 64, 3))
    text = {p["passage_id"]: p["text"] for p in passages}
    grounded = [k for k, m in meta.items() if m["passage_id"]]
    assert 0 < len(grounded) < len(meta)
    for k in grounded:  # the prompt shows the passage
        assert text[meta[k]["passage_id"]] in reqs[[r.key for r in reqs].index(k)].messages[0][1]
    keys = sorted(meta)
    mc = [k for k in keys if meta[k]["type"] == "mc"]
    refers_bad = next(k for k in mc[1:] if not meta[k]["passage_id"])  # refers to a passage it lacks: dropped
    refers_ok = next(k for k in mc[1:] if meta[k]["passage_id"])  # refers to the passage it carries: kept
    copies = next(k for k in keys if meta[k]["type"] == "yesno" and not meta[k]["passage_id"])  # writes its seed's
    outputs = {}
    for n, key in enumerate(keys):
        seed = seeds[int(meta[key]["seed_id"].split("/")[-1])]
        if meta[key]["type"] == "yesno":
            passage = seed["context"] if key == copies else f"The Ouse is a quiet river number {n} that never floods."
            outputs[key] = Completion(f"Passage: {passage}\nQuestion: Does river {n} flood in spring?\nAnswer: yes")
            continue
        opts = [f"new option {n}", f"other option {n}", f"third option {n}", f"fourth option {n}"]
        question = f"When does the river in question {n} flood each year?"
        if key == mc[0]:
            opts = seed["choices"][:2] + opts[2:]  # half the seed's options verbatim
        if key in (refers_bad, refers_ok):
            question = f"According to the passage, what floods in case {n}?"
        outputs[key] = Completion("Question: " + question + "\n" + "\n".join(f"{L}. {o}" for L, o in zip("ABCD", opts))
                                  + "\nAnswer: B")
    items, bad = pipeline.parse_round(outputs, meta)
    assert not bad and len(items) == len(meta)
    pipeline.ground(items, passages)
    kept, screened = pipeline.screen(items, {s["seed_id"]: s for s in seeds})
    assert screened == {"copied_seed_options": 1, "refers_to_missing_passage": 1, "copied_seed_passage": 1}, screened
    assert pipeline.near_copy_rate(screened, len(items)) == round(2 / len(items), 4)
    assert len(kept) == len(items) - 3 and any(it["request"] == refers_ok for it in kept)
    def own(it):  # the passage an ungrounded yes/no item wrote
        return outputs[it["request"]].text.split("\n")[0].removeprefix("Passage: ")

    for it in kept:  # a grounded item's passage is the one it was shown, in place of any it wrote
        assert it["context"] == text[it["passage_id"]] if it["passage_id"] else it["context"] in (None, own(it))
    docs, shown = render.render(kept, "mc", 1, seed=0)
    assert all(text[it["passage_id"]] in "\n".join(docs) for it in kept if it["passage_id"])
    assert sum(sum(c.values()) for c in shown["answer_positions"].values()) == shown["items"] == len(kept)


def test_rendered_options_are_shuffled_except_positional_ones():
    """Every generated answer is B here (a generator's position bias): rendering spreads the answers over the
    positions, each item's order fixed by its id; an item whose options refer to others keeps its order."""

    items = [{**_seed(i), "item_id": f"t/train/{i}#0", "choices": [f"w{i}", f"x{i}", f"y{i}", f"z{i}"],
              "answer_index": 1, "answer_text": f"x{i}"} for i in range(400)]
    docs, shown = render.render(items, "mc", 1, seed=0)
    counts = shown["answer_positions"]["4"]
    assert set(counts) == set("ABCD") and max(counts.values()) < 0.35 * 400, counts
    for d in docs[:50]:  # the answer line names the option that holds the answer text
        letter, text = d.rsplit("Answer: ", 1)[1].split(". ", 1)
        assert f"\n{letter}. {text}\n" in d + "\n"
    again, _ = render.render(items, "mc", 1, seed=0)
    assert again == docs, "seeded"
    fixed = {**items[0], "choices": ["red", "blue", "both of the above", "none of the above"]}
    assert render.shuffle_options(fixed, 0) == fixed


def test_verifier_sees_the_passage():
    """A yes/no item about a passage cannot be checked without it (it was shown without one before)."""
    from harness.generation import pipeline, verification
    from harness.generation.prompts import Templates

    item = {"item_id": "b/train/0#0", "type": "yesno", "question": "Does the river Elm flood in spring?",
            "context": "The river Elm floods every spring.", "choices": ["yes", "no"], "answer_index": 0,
            "answer_text": "yes"}
    open_item = {**item, "item_id": "p0#0.0", "type": "open", "choices": None, "answer_index": None}
    reqs, perms = verification.requests([item, open_item], verification.VerificationConfig(), Templates(),
                                        pipeline.Sampling(0.8, 0.95, 64, 3))
    assert len(reqs) == 4 + 3 and all("Passage: The river Elm floods every spring." in r.messages[0][1] for r in reqs)


def test_unseeded_pairs_follow_their_document():
    """The unseeded control as Nemotron-CC's diverse QA renders it: the document once, then a random 1..k of its
    k pairs (seeded); "according to the text" then has its text."""
    from harness.generation import pipeline

    passages = [{"passage_id": f"doc{i}.p0", "text": f"Document {i} tells of the harbour town number {i}."}
                for i in range(30)]
    items = [{"item_id": f"{p['passage_id']}#0.{j}", "seed_id": None, "passage_id": p["passage_id"], "task": "unseeded",
              "type": "open", "question": f"According to the text, what is town {i} pair {j}?", "context": None,
              "choices": None, "answer_index": None, "answer_text": f"harbour {i}.{j}"}
             for i, p in enumerate(passages) for j in range(4)]
    pipeline.ground(items, passages)
    kept, screened = pipeline.screen(items, {})
    assert not screened and len(kept) == 120
    docs, shown = render.render(kept, "qa", 1, seed=5)
    assert len(docs) == 30 and 30 <= shown["items"] < 120
    for d in docs:
        i = int(d.split("number ")[1].split(".")[0])
        assert d.startswith(passages[i]["text"]) and d.count(passages[i]["text"]) == 1
        assert 1 <= d.count("Question: ") <= 4 and f"harbour {i}." in d
    assert len({d.count("Question: ") for d in docs}) > 1, "the number of pairs kept varies"
    assert render.render(kept, "qa", 1, seed=5) == (docs, shown)


def test_prefilled_requests_continue_the_answer():
    """With prefill the request ends on the assistant's "Question:" (or "Passage:" where the generator writes its
    own passage), an OpenAI-compatible request asks vLLM to continue it, and the parser sees the whole answer."""
    from harness.generation import pipeline
    from harness.generation.backends import BackendOptions, Completion, make
    from harness.generation.prompts import Templates

    seeds = [_seed(0), {**_seed(1, "b"), "choices": ["yes", "no"], "context": "Some passage.", "question": "Is it?"}]
    cfg = {"samples_per_seed": 1, "fewshot": 1, "context_share": 0.0}
    plain, _ = pipeline.seeded_requests(seeds, cfg, Templates(), None, pipeline.Sampling(0.8, 0.95, 64, 3))
    reqs, meta = pipeline.seeded_requests(seeds, cfg, Templates(), None,
                                          pipeline.Sampling(0.8, 0.95, 64, 3, prefill=True))
    assert all(r.prefill == "" and len(r.messages) == 1 for r in plain)
    assert sorted(r.prefill for r in reqs) == ["Passage:", "Question:"]
    assert [r.messages[0] for r in reqs] == [r.messages[0] for r in plain], "the same prompt"
    body = make("openai", BackendOptions(model="m", base_url="http://127.0.0.1:1/v1"))._payload(reqs[0])
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": reqs[0].prefill}
    key = next(k for k, m in meta.items() if m["prefill"] == "Question:")
    items, bad = pipeline.parse_round({key: Completion(" Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\n"
                                                       "C. helium\nD. neon\nAnswer: B")}, {key: meta[key]})
    assert not bad and items[0]["question"] == "Which gas do plants take in?" and items[0]["answer_text"] == \
        "carbon dioxide"


def test_pairs_are_read_whatever_their_labels():
    """The unseeded control's bulleted output as a small model writes it: a preamble, "Q:/A:", numbered questions,
    bold labels - each a pair; the preamble costs none."""
    text = ("Here are some questions about the text:\n\n1. What did the president ask Congress to fund?\nA: A new "
            "navy.\n\n**Question 2:** When was the treaty signed?\n**Answer:** In the spring of 1803.\n\n"
            "Q: Who opposed the tariff?\nA: The southern states.")
    items, bad = fmt.parse_pairs(text, 3)
    assert [i["question"] for i in items] == ["What did the president ask Congress to fund?",
                                              "When was the treaty signed?", "Who opposed the tariff?"], (items, bad)
    assert [i["answer_text"] for i in items] == ["A new navy.", "In the spring of 1803.", "The southern states."]
    assert not bad
    # Nemotron-CC's own format: a preamble, then "- Question: ... Answer: ..." on one bulleted line
    items, bad = fmt.parse_pairs("Here are the questions and answers based on the provided text:\n- Question: What "
                                 "did the president ask Congress to fund? Answer: A new navy.\n- Question: When "
                                 "was the treaty signed?\n- Answer: In the spring of 1803.", 3)
    assert [(i["question"], i["answer_text"]) for i in items] == [
        ("What did the president ask Congress to fund?", "A new navy."),
        ("When was the treaty signed?", "In the spring of 1803.")] and not bad, (items, bad)


def test_unseeded_prompt_asks_for_varied_forms_and_inline_options_parse():
    """Nemotron-CC's diverse QA asks for a range of question forms, multiple choice with its options inline among
    them. The control's pairs are typed as the seeded items are: inline options become choices keyed by the
    answer's letter or words, a yes/no answer the options yes/no; so verification needs as many votes as for a
    seeded item with as many options (not an open answer's 2 of 3), and rendering shuffles the inline options."""
    from harness.generation import verification
    from harness.generation.prompts import Templates

    prompt = Templates().render("unseeded_qa", passage="The navy grew.", n_pairs=4)
    assert all(w in prompt for w in ("yes/no", "multiple-choice", "(a) ... (b)", "compares", "reasoning"))
    items, bad = fmt.parse_pairs(
        "Here are the questions:\nQuestion: Which gas do plants absorb? (a) oxygen (b) carbon dioxide (c) helium\n"
        "Answer: (b) carbon dioxide\nQuestion: Did the navy grow?\nAnswer: Yes, it doubled.\n"
        "Question: Which state objected, A) Ohio, B) South Carolina, or C) Maine?\nAnswer: South Carolina did.\n"
        "Question: Which colour is the sky, (a) red or (b) blue?\nAnswer: green\n"
        "Question: Who signed the treaty?\nAnswer: The president.", 5)
    assert bad == ["answer_not_an_option"], bad
    gas, grew, state, who = items
    assert (gas["question"], gas["choices"], gas["answer_index"], gas["answer_text"], gas["type"]) == \
        ("Which gas do plants absorb?", ["oxygen", "carbon dioxide", "helium"], 1, "carbon dioxide", "mc")
    assert (state["question"], state["choices"], state["answer_index"]) == \
        ("Which state objected?", ["Ohio", "South Carolina", "Maine"], 1)
    assert (grew["type"], grew["choices"], grew["answer_index"], grew["answer_text"]) == \
        ("yesno", ["yes", "no"], 0, "Yes, it doubled.")
    assert who["type"] == "open" and who["choices"] is None
    cfg = verification.VerificationConfig()
    assert [verification._requirement(i, cfg)[:2] for i in items] == [(3, 3), (4, 4), (3, 3), (3, 2)]
    # rendered in the qa layout: the options stay inline, shuffled per item, the answer's letter following them
    docs, shown = render.render([{**gas, "item_id": f"p{k}.0"} for k in range(12)], "qa", 1, seed=0)
    for doc in docs:
        letter = re.search(r"\(([abc])\) carbon dioxide", doc.splitlines()[0]).group(1)
        assert doc.splitlines()[1] == f"Answer: ({letter}) carbon dioxide", doc
    assert len({doc.splitlines()[0] for doc in docs}) > 1 and sum(shown["answer_positions"]["3"].values()) == 12
