"""The recipe's `base:` section and the import of a pretrained base (continuation arms).

With `base.from` set, every arm starts from that model instead of from scratch: a transformers checkpoint of a
supported architecture (harness/training/hf_convert.py), as a local folder or a hub name. The `base` stage imports
it once into a megatron.core checkpoint, checks the import's logits against transformers, exports it back and
checks that the round trip returns the base's weights exactly; every arm's training loads those weights (a fresh
optimizer: a transformers checkpoint has none), and the base's tokenizer replaces the recipe's. A base may also be
one of our own training runs (a train stage's folder or one of its checkpoints): copied, exported and checked the
same way, and its optimizer state loadable (`base.optimizer: load`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

# torch is imported inside the functions that use it: harness.recipe imports this module, and validating or
# planning a recipe loads no torch (tests/test_recipe_errors.py)

# transformers files copied with an export so that it loads as the base did (tokenizer, chat template, generation)
ASIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
               "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt")


@dataclass
class BaseConfig:
    # (`from` in a recipe: a Python keyword, so the field is from_; recipe.load renames the key)
    from_: Optional[str] = None  # a transformers folder or hub name; None: every arm trains from scratch
    revision: Optional[str] = None  # hub revision (branch, tag or commit); the resolved commit is in the manifest
    eod_token: Optional[str] = None  # the document separator; None: the base tokenizer's eos token
    check_positions: int = 256  # positions of the import's logit check against transformers
    check_tolerance: float = 1e-3  # the largest absolute logit difference accepted (fp32)
    # a megatron base (one of our train stages): `fresh` optimizer, or `load` its Adam moments and steps too
    optimizer: str = "fresh"


OPTIMIZER_CHOICES = ("fresh", "load")


def megatron_source(name: str) -> Optional[tuple[Path, Path]]:
    """(train stage folder, checkpoint folder) when `name` is one of our training runs: a train stage's folder
    (its newest complete checkpoint) or one of its `checkpoints/step_*` folders; else None."""
    from harness.training import checkpoint as ckpt

    folder = Path(os.path.abspath(os.path.expanduser(name)))
    if (folder / "train_spec.json").is_file():
        return folder, ckpt.latest(folder / "checkpoints")
    if (folder / "done").is_file() and (folder.parent.parent / "train_spec.json").is_file():
        return folder.parent.parent, folder
    return None


def is_local(name: str) -> bool:
    from harness.generation.models import looks_like_path

    return looks_like_path(name)


def validate_base(b: BaseConfig, seq_length: int, bad: Callable[[str, str], None], check_files: bool):
    """A local base is read here (its config.json): an unsupported architecture is refused before any work. A hub
    base is checked by the base stage, the first stage of the plan, before any training. Returns the local base's
    ModelShape when it could be read, else None."""
    if b.from_ is None:
        return None
    if b.check_positions < 8:
        bad("base.check_positions", "check at least 8 positions")
    if not 0 < b.check_tolerance <= 1:
        bad("base.check_tolerance", f"must be in (0, 1], got {b.check_tolerance}")
    if b.optimizer not in OPTIMIZER_CHOICES:
        bad("base.optimizer", f"unknown choice '{b.optimizer}' ({', '.join(OPTIMIZER_CHOICES)})")
    if not is_local(b.from_):
        if b.optimizer == "load":
            bad("base.optimizer", "load: only a megatron base (one of our training runs) has optimizer state")
        return
    folder = Path(b.from_)
    if not check_files:
        return
    mg = megatron_source(b.from_)
    if mg is not None:
        return _validate_megatron(b, *mg, seq_length, bad)
    if b.optimizer == "load":
        bad("base.optimizer", "load: a transformers checkpoint has no optimizer state (use fresh)")
    if not (folder / "config.json").is_file():
        bad("base.from", f"no config.json in '{folder}' (a transformers model folder)")
        return
    shape = None
    try:
        shape = check_architecture(read_config(folder), seq_length)
    except ValueError as e:
        bad("base.from", f"{folder}: {e}")
    if not list(folder.glob("*.safetensors")) and not list(folder.glob("pytorch_model*.bin")):
        bad("base.from", f"no weights (*.safetensors) in '{folder}'")
    if not (folder / "tokenizer.json").is_file():
        bad("base.from", f"no tokenizer.json in '{folder}': the base's tokenizer is needed (a fast tokenizer)")
        return
    try:
        eod_token(folder, b.eod_token)
    except ValueError as e:
        bad("base.eod_token", str(e))
    return shape


def _validate_megatron(b: BaseConfig, run: Path, step: Optional[Path], seq_length: int, bad):
    from harness.training import model as mdl

    if step is None:
        bad("base.from", f"'{b.from_}': this training run has no complete checkpoint")
        return None
    spec = json.loads((run / "train_spec.json").read_text())
    if b.eod_token is not None and b.eod_token != spec["tokenizer"]["eod_token"]:
        bad("base.eod_token", f"'{b.eod_token}': a megatron base keeps the document separator it was trained with "
                              f"('{spec['tokenizer']['eod_token']}')")
    if not Path(spec["tokenizer"]["path"]).is_file():
        bad("base.from", f"'{b.from_}': its tokenizer {spec['tokenizer']['path']} is gone")
    return mdl.ModelShape(**{**spec["model"], "seq_length": seq_length})


def check_architecture(config: dict, seq_length: int):
    from harness.training import hf_convert

    shape = hf_convert.shape_from_config(config, seq_length)
    if seq_length > config.get("max_position_embeddings", seq_length):
        raise ValueError(f"data.seq_length {seq_length} is longer than the base's max_position_embeddings "
                         f"{config['max_position_embeddings']}")
    return shape


def import_megatron(run: Path, step: Path, out: Path, seq_length: int, say: Callable[[str], None]) -> dict:
    """One of our training runs as a base: its checkpoint copied into out/checkpoint (model and optimizer state),
    its tokenizer, and its export in out/hf (a transformers folder, for the base's evaluation), checked both ways:
    the export's logits against the megatron model's, and the export read back into megatron's layout exactly. The
    layout is import_base's, so the train stage and the evaluation read either alike."""
    import torch

    from harness.data.tokenizer import describe
    from harness.training import export, hf_convert, model as mdl

    spec0 = json.loads((run / "train_spec.json").read_text())
    shape = mdl.ModelShape(**{**spec0["model"], "seq_length": seq_length})
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(step, out / "checkpoint", copy_function=_link_or_copy)
    shutil.copyfile(spec0["tokenizer"]["path"], out / "tokenizer.json")
    tok_info = describe(out / "tokenizer.json", spec0["tokenizer"]["eod_token"])
    spec = {"model": shape.__dict__, "tokenizer": {"path": str(out / "tokenizer.json"), **tok_info}}
    model = export.load_model(spec, out / "checkpoint")
    aside = out / "hf-base"  # the architecture later exports return to: the run's own base's, else Llama's
    if spec0.get("base"):
        shutil.copytree(spec0["base"]["hf"], aside)
    else:
        export.export(spec, out / "checkpoint", aside, model=model)
        for f in aside.glob("*.safetensors"):  # its config and tokenizer files only
            f.unlink()
    spec["base"] = {"hf": str(aside)}
    export.export(spec, out / "checkpoint", out / "hf", model=model)
    hf_model = load_hf(out / "hf")
    back = hf_convert.to_megatron(hf_model.state_dict(), shape)
    ours = export.megatron_state_dict(model)
    differ = [k for k, v in ours.items() if k not in back or not torch.equal(back[k], v)]
    if differ:
        raise RuntimeError(f"export -> import does not give the run's weights back: {differ[:5]}")
    check = logit_check(hf_model, model, tok_info["vocab_size"], min(256, seq_length))
    say(f"megatron base {step}: {shape.parameters():,} parameters; its export's logits within "
        f"{check['max_abs_logit_diff']:.2e}, {check['greedy_flips']} greedy flips")
    if check["greedy_flips"] or check["max_abs_logit_diff"] > 1e-3:
        raise RuntimeError(f"the base's export disagrees with its checkpoint: {check}")
    common = torch.load(step / "common_rank00000.pt", weights_only=False)
    (out / "train_spec.json").write_text(json.dumps(spec, indent=2))
    identity = json.loads((step / "identity.json").read_text())
    result = {"final_checkpoint": "checkpoint", "shape": shape.__dict__, "model_type": "megatron",
              "parameters": shape.parameters(), "check": check, "round_trip": "exact", "step": common["step"],
              "optimizer": {"data_parallel_size": identity.get("data_parallel_size")}, **tok_info}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def _link_or_copy(src: str, dst: str) -> str:
    """A checkpoint's files are never modified in place: a hard link is a copy that costs nothing."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def resolve(b: BaseConfig) -> tuple[Path, dict]:
    """The base's folder on this machine, and where it came from (a hub base: its resolved commit). A hub base comes
    from the user's HF cache (HF_HOME / HF_HUB_CACHE); HF_HUB_OFFLINE=1 keeps it to what is cached."""
    if is_local(b.from_):
        return Path(os.path.abspath(os.path.expanduser(b.from_))), {"local": b.from_}
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(b.from_, revision=b.revision,
                                        allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:
        raise RuntimeError(f"base.from '{b.from_}' (revision {b.revision or 'main'}) cannot be had from the hub or "
                           f"the HF cache: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return folder, {"hub": b.from_, "revision": b.revision, "commit": folder.name}


def read_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def eod_token(folder: Path, override: Optional[str]) -> str:
    """The token that ends every document: the recipe's, else the tokenizer's eos token, else the model's eos id."""
    from harness.data.tokenizer import load

    tok = load(Path(folder) / "tokenizer.json")
    if override is not None:
        if tok.token_to_id(override) is None:
            raise ValueError(f"the base tokenizer has no token '{override}'")
        return override
    tc = Path(folder) / "tokenizer_config.json"
    eos = json.loads(tc.read_text()).get("eos_token") if tc.is_file() else None
    if isinstance(eos, dict):
        eos = eos.get("content")
    if eos is None:
        eid = read_config(folder).get("eos_token_id")
        eid = eid[0] if isinstance(eid, list) else eid
        eos = tok.id_to_token(eid) if eid is not None else None
    if eos is None or tok.token_to_id(eos) is None:
        raise ValueError(f"{folder}: no eos token found in tokenizer_config.json or config.json; set base.eod_token")
    return eos


def load_hf(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def logit_check(hf_model, mg_model, vocab: int, positions: int, seed: int = 0) -> dict:
    """Both models on the same random token sequence: the largest absolute logit difference, and the positions
    whose greedy (argmax) token differs where the top-2 margin is larger than that difference (a near-tie may
    flip either way)."""
    import torch

    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (1, positions), generator=g)
        theirs = hf_model(input_ids=ids).logits[0].float()
        pos = torch.arange(positions).unsqueeze(0)
        ours = mg_model(ids, pos, None)[0].float()[:, :theirs.shape[-1]]
        diff = float((ours - theirs).abs().max())
        top2 = theirs.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * diff
        flips = int(((ours.argmax(-1) != theirs.argmax(-1)) & clear).sum())
        return {"positions": positions, "max_abs_logit_diff": diff, "greedy_flips": flips,
                "near_ties": int((~clear).sum())}


def save_weights(model, path: Path) -> None:
    """The model's weights as a dist_checkpointing checkpoint (no optimizer): what a train stage starts from."""
    from megatron.core import dist_checkpointing

    path.mkdir(parents=True)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(path))


def import_base(folder: Path, out: Path, seq_length: int, eod: str, positions: int, tolerance: float,
                say: Callable[[str], None]) -> dict:
    """Import the base into out/checkpoint, check its logits, export it back into out/hf and check the round trip;
    writes out/train_spec.json and out/result.json in a train stage's layout, so that the base is evaluated like an
    arm (either evaluation backend)."""
    import torch

    from harness.data.tokenizer import describe
    from harness.training import export, hf_convert, model as mdl

    config = read_config(folder)
    shape = check_architecture(config, seq_length)
    hf_model = load_hf(folder)
    theirs = {k: v for k, v in hf_model.state_dict().items() if "rotary_emb" not in k}
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in theirs.values()})
    say(f"base {folder}: {config.get('model_type')} {shape.parameters():,} parameters, stored as {'/'.join(dtypes)}")
    out.mkdir(parents=True, exist_ok=True)
    export.single_process(out)
    model, _ = mdl.build(shape, "fp32", on_cpu=True)
    missing, unexpected = model.load_state_dict(hf_convert.to_megatron(hf_model.state_dict(), shape), strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"import mapping incomplete: missing {missing}, unexpected {unexpected}")
    model.eval()
    check = logit_check(hf_model, model, min(config["vocab_size"], shape.vocab_size), min(positions, seq_length))
    say(f"logit check over {check['positions']} positions: max |diff| {check['max_abs_logit_diff']:.2e} "
        f"(tolerance {tolerance:g}), {check['greedy_flips']} greedy flips, {check['near_ties']} near-ties")
    if check["max_abs_logit_diff"] > tolerance or check["greedy_flips"]:
        raise RuntimeError(f"the imported model's logits differ from transformers': {check} (tolerance {tolerance})")
    del hf_model
    save_weights(model, out / "checkpoint")
    tok_info = describe(folder / "tokenizer.json", eod)
    if tok_info["vocab_size"] > shape.vocab_size:
        raise ValueError(f"the base tokenizer has {tok_info['vocab_size']} tokens, its model {shape.vocab_size} rows")
    shutil.copyfile(folder / "tokenizer.json", out / "tokenizer.json")
    spec = {"model": shape.__dict__, "tokenizer": {"path": str(out / "tokenizer.json"), **tok_info},
            "base": {"hf": str(out / "hf")}}
    # the export reads the base's own config and tokenizer files from hf-base/ (no weights)
    aside = out / "hf-base"
    aside.mkdir()
    for name in ("config.json", *ASIDE_FILES):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, aside / name)
    spec["base"]["hf"] = str(aside)
    export.export(spec, out / "checkpoint", out / "hf", model=model)
    back = load_hf(out / "hf").state_dict()
    differ = [k for k, v in theirs.items() if k not in back or not torch.equal(back[k], v.float())]
    if differ:
        raise RuntimeError(f"import -> export does not give the base's weights back: {differ[:5]}")
    (out / "train_spec.json").write_text(json.dumps(spec, indent=2))
    result = {"final_checkpoint": "checkpoint", "shape": shape.__dict__, "model_type": config.get("model_type"),
              "parameters": shape.parameters(), "dtypes": dtypes, "check": check, "round_trip": "exact",
              **tok_info}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result
