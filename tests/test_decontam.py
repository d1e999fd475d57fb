"""Decontamination against the real offline suite: planted eval items (verbatim or lightly edited) are caught,
train-split items are not reported, the base-corpus check reports per task; dedup against seeds."""

import json
import random

import pytest

from harness.filters import decontam, dedup
from harness.plan import Plan

from conftest import base_recipe, make_docs, write_jsonl, write_recipe


def _suite_docs(plan: Plan) -> tuple[list[dict], list[dict]]:
    data = plan.dir(plan.by_id("suite")) / "suite" / "data"
    evals, train = [], []
    for f in sorted(data.glob("*/*.jsonl")):
        for line in f.read_text().splitlines():
            d = {**json.loads(line), "task": f.parent.name, "split": f.stem}
            (train if f.stem == "train" else evals).append(d)
    return evals, train


@pytest.fixture(scope="module")
def index_and_docs(suite_store):
    plan = Plan.load(suite_store / "runs" / "toy" / "plan.json")
    index = decontam.Index.load(plan.dir(plan.by_id("decontam_index")) / "index")
    return plan, index, *_suite_docs(plan)


def _as_item(doc: dict, edit: str | None, rng: random.Random) -> dict:
    q = doc["query"].replace("Question:", "").replace("\nAnswer:", "").strip()
    choices = list(doc["choices"])
    gold = choices[doc["gold"]]
    if edit == "case":
        q = q.upper().replace(" ", "  ") + " ?!"
    elif edit == "prefix":
        q = "Here is a question for you. " + q
    elif edit == "shuffle":
        rng.shuffle(choices)
    elif edit == "word":
        w = q.split()
        w[len(w) // 2] = "zebra"
        q = " ".join(w)
    return {"item_id": doc["id"], "question": q, "choices": choices, "answer_index": choices.index(gold),
            "answer_text": gold, "context": None}


def test_index_covers_every_eval_split(index_and_docs):
    plan, index, evals, train = index_and_docs
    st = index.stats
    assert st["eval_items"] == len(evals) > 40_000 and st["unindexed_items"] == 0
    assert set(st["items_per_task"]) == {"arc_easy", "arc_challenge", "boolq", "csqa", "hellaswag", "openbookqa",
                                         "piqa", "socialiqa", "winogrande", "sciq", "mmlu"}
    assert {e["split"] for e in evals} == {"validation", "test"} and st["ngrams_kept"] > 0.9 * st["ngrams"]


@pytest.mark.parametrize("edit", [None, "case", "prefix", "shuffle"])
def test_planted_eval_items_are_all_caught(index_and_docs, edit):
    _, index, evals, _ = index_and_docs
    rng = random.Random(7)
    planted = [_as_item(d, edit, rng) for d in rng.sample(evals, 300)]
    clean, dropped, report = decontam.check_items(index, planted)
    assert not clean, f"missed: {[c['item_id'] for c in clean]}"
    assert all(d["item_id"] in d["contaminates"] for d in dropped)
    assert sum(r["dropped"] for r in report.values()) >= len(planted)


def test_one_word_edits_are_caught(index_and_docs):
    _, index, evals, _ = index_and_docs
    rng = random.Random(8)
    # items of at least 16 words: there n <= words // 2, so a one-word edit always leaves a whole n-gram (shorter
    # items are matched with n = 8 or whole, and a one-word edit is no longer light)
    long = [d for d in evals if len(decontam.words(decontam.eval_sequences(d)[0])) >= 16]
    planted = [_as_item(d, "word", rng) for d in rng.sample(long, 300)]
    clean, _, _ = decontam.check_items(index, planted)
    assert not clean, [c["item_id"] for c in clean]


def test_train_items_and_fresh_text_are_not_eval_contamination(index_and_docs):
    _, index, _, train = index_and_docs
    rng = random.Random(9)
    items = [_as_item(d, None, rng) for d in rng.sample(train, 300)]
    items += [{"item_id": f"fresh{i}", "question": d, "answer_text": "yes", "choices": None}
              for i, d in enumerate(make_docs(50, seed=5))]
    clean, dropped, report = decontam.check_items(index, items)
    assert not dropped and not report and len(clean) == len(items)


def test_base_corpus_report_per_task(suite_store, tmp_path, cli, index_and_docs):
    _, _, evals, _ = index_and_docs
    rng = random.Random(3)
    planted = [d for d in evals if d["task"] == "arc_challenge"][:3] + [d for d in evals if d["task"] == "mmlu"][:2]
    docs = make_docs(40, seed=11)
    for d in planted:  # an eval question pasted into a web page
        i = rng.randrange(len(docs))
        docs[i] = f"{docs[i]} {d['query']} {d['choices'][d['gold']]} {docs[i]}"
    r = base_recipe(tmp_path, store=str(suite_store / "runs"), experiment="corpuscheck",
                    decontamination={"corpus_report": True})
    write_jsonl(tmp_path / "corpora" / "web.jsonl", docs)
    code, out = cli("run", write_recipe(tmp_path / "r.yaml", r), "--only", "contamination/web")
    assert code == 0, out
    plan = Plan.load(suite_store / "runs" / "corpuscheck" / "plan.json")
    rep = json.loads((plan.dir(plan.by_id("contamination/web")) / "contamination.json").read_text())
    assert rep["documents"] == 40
    assert rep["per_task"]["arc_challenge"]["matched_eval_items"] == 3
    assert rep["per_task"]["arc_challenge"]["documents"] == 3 and rep["per_task"]["mmlu"]["documents"] == 2
    # MMLU has templated near-twins ("Find the degree for the given field extension ..."): a pasted item matches
    # its twins too
    assert rep["per_task"]["mmlu"]["matched_eval_items"] >= 2
    assert set(rep["per_task"]) == {"arc_challenge", "mmlu"}
    md = (plan.dir(plan.by_id("contamination/web")) / "contamination.md").read_text()
    assert "| arc_challenge | 3 |" in md


def test_dedup_drops_seed_copies_and_near_duplicates():
    seeds = [{"seed_id": "s1", "question": "Which gas do plants absorb from the air for photosynthesis?",
              "choices": ["oxygen", "carbon dioxide", "nitrogen"], "answer_text": "carbon dioxide"}]
    base = {"choices": ["Mars", "Venus", "Jupiter"], "answer_text": "Mars"}
    items = [
        {"item_id": "a", **seeds[0], "question": "Which gas do plants absorb from the air for photosynthesis today?"},
        {"item_id": "b", **base, "question": "Which planet is known as the red planet of our solar system?"},
        {"item_id": "c", **base, "question": "Which planet is known as the red planet of our solar system?"},
        {"item_id": "d", **base, "question": "Which planet is known as the red planet of the solar system?"},
        {"item_id": "e", "question": "How many legs does a spider have?", "choices": ["six", "eight"],
         "answer_text": "eight"},
    ]
    kept, dropped = dedup.dedup(items, seeds, 0.7)
    assert [k["item_id"] for k in kept] == ["b", "e"]
    assert dropped == {"copies_seed": 1, "exact_duplicate": 1, "near_duplicate": 1}
