"""Export a megatron.core checkpoint to a transformers folder with its tokenizer.

A model trained from scratch becomes a LlamaForCausalLM; a continuation arm returns to its base's own architecture
(config, tokenizer files and generation settings copied from the base). The weight mapping is
harness/training/hf_convert.py; both sides use rotate-half RoPE and RMSNorm, so logits agree to float precision
(tested).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def single_process(where: Path) -> None:
    """torch.distributed and megatron's model-parallel state for one lone process (building or loading a model)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from harness.training import cpu_compat

    if not dist.is_initialized():
        store = Path(where).parent / f".export-pg-{os.getpid()}"
        dist.init_process_group("gloo", store=dist.FileStore(str(store), 1), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    cpu_compat.apply()
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    if not get_cuda_rng_tracker().get_states():  # attention forks this tracker even without dropout
        model_parallel_cuda_manual_seed(0)


def load_model(spec: dict, checkpoint: Path):
    """A checkpoint's model in a megatron.core GPTModel, in this (lone) process; no optimizer state is read."""
    from megatron.core import dist_checkpointing

    from harness.training import model as mdl

    single_process(checkpoint)
    model, _ = mdl.build(mdl.ModelShape(**spec["model"]), "fp32", on_cpu=True)
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(checkpoint))
    model.load_state_dict(state["model"])
    return model.eval()


def megatron_state_dict(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def export(spec: dict, checkpoint: Path, out: Path, model=None) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from harness.training import hf_convert, model as mdl

    shape = mdl.ModelShape(**spec["model"])
    weights = hf_convert.to_hf(megatron_state_dict(model if model is not None else load_model(spec, checkpoint)),
                               shape)
    tok = spec["tokenizer"]
    base = spec.get("base")
    if base:  # a continuation: the base's own architecture and files
        config = AutoConfig.from_pretrained(base["hf"])
        config.dtype = "float32"
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        hf = LlamaForCausalLM(LlamaConfig(**hf_convert.llama_config(shape, tok["eod_id"])))
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError(f"export mapping incomplete: missing {missing}, unexpected {unexpected}")
    hf.save_pretrained(out)
    if base:
        from harness.training.base import ASIDE_FILES

        for name in ASIDE_FILES:
            if (Path(base["hf"]) / name).is_file():
                shutil.copyfile(Path(base["hf"]) / name, Path(out) / name)
        return out
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=tok["path"], eos_token=tok["eod_token"],
                                     bos_token=tok["eod_token"], pad_token=tok["eod_token"])
    hf_tok.model_max_length = shape.seq_length
    hf_tok.save_pretrained(out)
    return out
