"""Strict parsing of generator outputs (every malformed output dropped with its reason), item types, the plan of
a recipe with generation (templates hashed into the stage), without running a model."""

import pytest

from harness.generation import parse as fmt
from harness.plan import build
from harness.recipe import load
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
