"""Decontamination against the real offline suite: planted eval items (verbatim or lightly edited) are caught,
train-split items are not reported, the base-corpus check reports per task; dedup against seeds. The fuzzy stage:
light edits that no n-gram matches, in items and in documents, no flags on thousands of unrelated paragraphs, and
none for resembling a TRAIN item, even one that an eval item resembles."""

import dataclasses
import json
import random
import re
from pathlib import Path

import pytest

from harness.filters import decontam, dedup, fuzzy
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


@pytest.fixture(scope="module")
def mc_evals(index_and_docs):
    """The multiple-choice eval items: the edits below reorder and letter their options."""
    return [d for d in index_and_docs[2] if "choices" in d]


def _question(doc: dict) -> str:
    return doc["query"].replace("Question:", "").replace("\nAnswer:", "").strip()


def _gold(doc: dict) -> tuple[list[str] | None, str]:
    """A multiple-choice item's options and gold option; a generative one's reference answer, no options."""
    if "choices" not in doc:
        return None, str(doc["answer"])
    return list(doc["choices"]), doc["choices"][doc["gold"]]


def _as_item(doc: dict, edit: str | None, rng: random.Random) -> dict:
    q = _question(doc)
    choices, gold = _gold(doc)
    if edit == "case":
        q = q.upper().replace(" ", "  ") + " ?!"
    elif edit == "prefix":
        q = "Here is a question for you. " + q
    elif edit == "shuffle" and choices:
        rng.shuffle(choices)
    elif edit == "word":
        w = q.split()
        w[len(w) // 2] = "zebra"
        q = " ".join(w)
    return {"item_id": doc["id"], "question": q, "choices": choices,
            "answer_index": choices.index(gold) if choices else None, "answer_text": gold, "context": None}


SOTU = Path(__file__).resolve().parents[1] / ".cache" / "assets" / "sotu.jsonl"
MOBY_DICK = SOTU.with_name("moby_dick.jsonl")
EDITS = ("case", "word", "swap", "options", "phrased", "combo")


def _edited(doc: dict, edit: str, rng: random.Random) -> dict:
    """An eval item as a generator (or a web page) might restate it: a light edit of one kind."""
    q = _question(doc)
    choices, gold = _gold(doc)
    answer = gold
    w = q.split()
    if edit == "case":  # case and punctuation
        q = re.sub(r"[?!:;]|,(?!\d)", "", q).upper() + " ;"
    elif edit == "word":
        w[rng.randrange(len(w))] = rng.choice(["zebra", "thing", "blue"])
        q = " ".join(w)
    elif edit == "swap" and len(w) > 1:
        i = rng.randrange(len(w) - 1)
        w[i], w[i + 1] = w[i + 1], w[i]
        q = " ".join(w)
    elif edit == "options" and choices:  # reordered and lettered inside the question; the key is a letter
        rng.shuffle(choices)
        q += "\n" + "\n".join(f"({'ABCDEFGH'[i]}) {c}" for i, c in enumerate(choices))
        answer = f"{'ABCDEFGH'[choices.index(gold)]}. {gold}"
        choices = None
    elif edit == "phrased":
        answer = f"The answer is {gold}."
    elif edit == "combo" and len(w) > 1:  # lower case, a word replaced, neighbours swapped, a phrased answer
        w = q.lower().split()
        w[rng.randrange(len(w))] = "zebra"
        i = rng.randrange(len(w) - 1)
        w[i], w[i + 1] = w[i + 1], w[i]
        q, answer = " ".join(w), f"the answer is {gold}"
    return {"item_id": doc["id"], "question": q, "choices": choices, "answer_text": answer, "context": None}


def _exact_only(index: decontam.Index) -> decontam.Index:
    return dataclasses.replace(index, fuzzy=None)


@pytest.fixture(scope="module")
def short_evals(mc_evals):
    """Eval items of at most 20 question words: where a light edit leaves no n-gram of the exact stage whole."""
    return [d for d in mc_evals if 3 <= len(fuzzy.words(d["query"])) <= 20]


def test_align_is_the_semi_global_edit_distance():
    def reference(p, t):  # the textbook table: the stretch may start and end anywhere in t
        row = [0] * (len(t) + 1)
        for i, c in enumerate(p, 1):
            new = [i]
            for j, x in enumerate(t, 1):
                new.append(min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (c != x)))
            row = new
        return min(row)

    rng = random.Random(0)
    for _ in range(2000):
        p = [rng.choice("abcde") for _ in range(rng.randint(1, 70))]  # past 64 words: Python ints carry the bits
        t = [rng.choice("abcde") for _ in range(rng.randint(0, 90))]
        assert fuzzy.align(p, t)[0] == reference(p, t)


def test_template_and_train_split_ngrams_are_excused():
    """The exact stage's two exclusions, on hand-made items: a 13-word phrase that max_item_freq eval items share
    (a template) and an item's 13-gram that the task's train split also holds are dropped from the index and counted;
    the items' other 13-grams still flag a text."""
    template = "which of the following statements best describes the main idea of this text"  # 13 words

    def phrase(tag: str) -> str:  # 13 words found nowhere else
        return " ".join(f"{tag}w{j}" for j in range(13))

    # ten items (= max_item_freq) open with the template, two with a phrase of their own; every item then has a
    # unique 13-word tail: 26 words, so n = 13 and each item has 14 13-grams
    heads = [template] * 10 + [phrase("h10"), phrase("h11")]
    evals = [{"id": f"e{i}", "task": "toy", "split": "test", "query": f"{head} {phrase(f'u{i}')}"}
             for i, head in enumerate(heads)]
    train = [{"id": "t0", "task": "toy", "split": "train", "query": phrase("u0")}]  # e0's tail, in the train split
    index = decontam.build(evals, train, n=13, n_min=8, max_item_freq=10, fuzzy_params=None)
    st = index.stats
    assert index.ns == [13] and st["unindexed_items"] == 0 and "fuzzy" not in st
    assert st["ngrams"] == 10 * 13 + 1 + 2 * 14  # the template counted once
    assert st["ngrams_shared_by_many_items"] == 1 and st["ngrams_in_train_splits"] == 1
    assert st["ngrams_kept"] == st["ngrams"] - 2 == len(index.hashes)

    filler = "lorem ipsum dolor sit amet consectetur"
    texts = {"template": f"{filler} {template} {filler}",
             "train-shared": f"{filler} {phrase('u0')} {filler}",
             "e5's tail": f"{filler} {phrase('u5')} {filler}",
             "e0 across template and tail": f"{filler} text {' '.join(phrase('u0').split()[:12])} {filler}"}
    hits = dict(zip(texts, decontam.Checker(index).matches_each(list(texts.values()))))
    assert hits["template"] == {} and hits["train-shared"] == {}
    assert hits["e5's tail"] == {5: phrase("u5")}
    assert hits["e0 across template and tail"] == {0: "text " + " ".join(phrase("u0").split()[:12])}

    # the same items without the exclusions: the template flags all ten items, the train-shared tail flags e0
    kept = decontam.build(evals, [], max_item_freq=11, fuzzy_params=None)
    assert kept.stats["ngrams_shared_by_many_items"] == 0 and kept.stats["ngrams_in_train_splits"] == 0
    again = decontam.Checker(kept).matches_each([texts["template"], texts["train-shared"]])
    assert sorted(again[0]) == list(range(10)) and set(again[0].values()) == {template}
    assert again[1] == {0: phrase("u0")}


@pytest.mark.parametrize("edit", EDITS)
def test_lightly_edited_items_are_caught(index_and_docs, short_evals, edit):
    _, index, _, _ = index_and_docs
    rng = random.Random(EDITS.index(edit))
    planted = [_edited(d, edit, rng) for d in rng.sample(short_evals, 600)]
    clean, dropped, _ = decontam.check_items(index, planted)
    # one light edit: at least 95% caught; all of them at once (combo) is no longer light for a short question
    assert len(dropped) >= (0.90 if edit == "combo" else 0.95) * len(planted), [c["question"] for c in clean[:10]]
    assert all(d["item_id"] in d["contaminates"] for d in dropped)
    if edit in ("word", "swap", "options", "combo"):  # what the n-gram stage alone lets through, the fuzzy one catches
        missed, _, _ = decontam.check_items(_exact_only(index), planted)
        _, fuzzy_caught, _ = decontam.check_items(index, missed)
        assert len(missed) >= 0.02 * len(planted) and len(fuzzy_caught) >= 0.5 * len(missed)
        assert {d["matched_by"] for d in fuzzy_caught} == {"fuzzy"}


def _paragraphs(corpus: Path, n: int | None = None) -> list[str]:
    """Paragraph-sized pieces (120 words) of an offline corpus (the SOTU addresses, Moby-Dick's chapters): prose
    that no eval item is about; n of them at random, or all."""
    out: list[str] = []
    for line in corpus.read_text().splitlines():
        w = json.loads(line)["text"].split()
        out += [" ".join(w[i:i + 120]) for i in range(0, len(w) - 119, 120)]
    return random.Random(4).sample(out, n) if n else out


def test_fuzzy_stage_in_documents_catches_edits_and_spares_unrelated_paragraphs(index_and_docs, short_evals):
    _, index, _, _ = index_and_docs
    paras = _paragraphs(SOTU, 4000)
    rep = decontam.check_documents(index, paras)
    # the exact stage finds real quotations (MMLU's history items quote addresses); the fuzzy stage adds none
    assert rep["matched_by"].get("fuzzy", 0) <= 0.001 * len(paras), rep["per_task"]
    # a novel no eval item quotes: neither stage flags its paragraphs
    novel = _paragraphs(MOBY_DICK)
    rep = decontam.check_documents(index, novel)
    assert len(novel) > 1600 and sum(rep["matched_by"].values()) <= 0.001 * len(novel), rep
    rng = random.Random(12)
    planted, want = [], []
    for d in rng.sample(short_evals, 300):
        it = _edited(d, rng.choice(EDITS), rng)
        body = " ".join([it["question"], *(it["choices"] or []), it["answer_text"]])
        planted.append(f"{rng.choice(paras)} {body} {rng.choice(paras)}")
        want.append(d["id"])
    ck = decontam.Checker(index)
    fz = fuzzy.FuzzyChecker(index.fuzzy)
    found = [{index.items[e]["id"] for e in {**a, **b}} for a, b in zip(ck.matches_each(planted),
                                                                         fz.matches_each(planted))]
    caught = sum(w in f for w, f in zip(want, found))
    exact = sum(w in {index.items[e]["id"] for e in a} for w, a in zip(want, ck.matches_each(planted)))
    assert caught >= 0.95 * len(planted) and exact < caught


def test_resembling_a_train_item_is_not_contamination(index_and_docs):
    """Train items that an eval item resembles (the fuzzy stage matches them to it) are, restated, still closer to
    themselves: not flagged. Without the train bank's rule every one of them would be."""
    _, index, _, train = index_and_docs
    train = random.Random(1).sample(train, 40_000)  # a quarter of the train items: enough twins, a quarter the time
    texts = [fuzzy.item_text(fuzzy.question_of(d), d["choices"], fuzzy.answer_of(d)) for d in train]
    no_train = fuzzy.FuzzyChecker(dataclasses.replace(index.fuzzy, train=fuzzy.Bank(
        index.fuzzy.train.keys[:0], index.fuzzy.train.owner[:0], index.fuzzy.train.need[:0], [], [])))
    twins = [d for d, h in zip(train, no_train.matches_each(texts)) if h]
    assert len(twins) >= 50  # benchmarks' train and eval splits hold near-twins
    rng = random.Random(2)
    items = [_edited(d, rng.choice(["case", "phrased", "none"]), rng) for d in twins]
    unruled = no_train.matches_each([fuzzy.item_text(i["question"], i["choices"], i["answer_text"]) for i in items])
    assert sum(bool(h) for h in unruled) >= 0.9 * len(items)
    clean, dropped, _ = decontam.check_items(index, items)
    assert not [d for d in dropped if d["matched_by"] == "fuzzy"]


def test_index_covers_every_eval_split(index_and_docs):
    plan, index, evals, train = index_and_docs
    st = index.stats
    assert st["eval_items"] == len(evals) > 40_000 and st["unindexed_items"] == 0
    assert set(st["items_per_task"]) == {"arc_easy", "arc_challenge", "boolq", "csqa", "hellaswag", "openbookqa",
                                         "piqa", "socialiqa", "winogrande", "sciq", "mmlu", "triviaqa", "nq_open",
                                         "arithmetic"}
    assert {e["split"] for e in evals} == {"validation", "test"} and st["ngrams_kept"] > 0.9 * st["ngrams"]
    fz = st["fuzzy"]
    assert fz["eval"]["items"] == len(evals) and fz["eval"]["keyed"] > 0.99 * len(evals)
    assert fz["train"]["items"] == len(train) > 100_000 and index.fuzzy.params["threshold"] == 0.75


@pytest.mark.parametrize("edit", [None, "case", "prefix", "shuffle"])
def test_planted_eval_items_are_all_caught(index_and_docs, mc_evals, edit):
    index = index_and_docs[1]
    rng = random.Random(7)
    planted = [_as_item(d, edit, rng) for d in rng.sample(mc_evals, 300)]
    clean, dropped, report = decontam.check_items(index, planted)
    assert not clean, f"missed: {[c['item_id'] for c in clean]}"
    assert all(d["item_id"] in d["contaminates"] for d in dropped)
    assert sum(r["dropped"] for r in report.values()) >= len(planted)


@pytest.mark.parametrize("edit", [None, "case", "phrased", "word"])
def test_planted_generative_items_are_caught(index_and_docs, edit):
    """Open-answer items (TriviaQA, NQ-open): a question and its reference answer, restated, is contamination like a
    multiple-choice item is. (Arithmetic's four-word sums are below any text-overlap test's reach: none is sampled.)"""
    index, evals = index_and_docs[1], index_and_docs[2]
    rng = random.Random(13)
    gen = [d for d in evals if "choices" not in d and len(fuzzy.words(d["query"])) >= 6]
    assert {d["task"] for d in gen} == {"triviaqa", "nq_open"}
    planted = [_as_item(d, None, rng) if edit is None else _edited(d, edit, rng) for d in rng.sample(gen, 300)]
    clean, dropped, _ = decontam.check_items(index, planted)
    assert len(dropped) >= (1.0 if edit is None else 0.95) * len(planted), [c["question"] for c in clean[:10]]
    assert all(d["item_id"] in d["contaminates"] for d in dropped)


def test_one_word_edits_are_caught(index_and_docs, mc_evals):
    index, evals = index_and_docs[1], mc_evals
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
