"""Export a megatron.core checkpoint to a transformers LlamaForCausalLM folder with its tokenizer.

The mapping (megatron local layer spec -> Llama): embedding -> embed_tokens; per layer input_layernorm,
self_attention.linear_qkv (packed per query group: [q x heads-per-group, k, v]) -> q/k/v_proj,
self_attention.linear_proj -> o_proj, pre_mlp_layernorm -> post_attention_layernorm, mlp.linear_fc1 ([gate; up])
-> gate_proj/up_proj, mlp.linear_fc2 -> down_proj; decoder.final_layernorm -> norm; output_layer -> lm_head.
Both use rotate-half RoPE and RMSNorm, so logits agree to float precision (tested).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def load_model(spec: dict, checkpoint: Path):
    """A checkpoint's model in a megatron.core GPTModel, in this (lone) process; no optimizer state is read."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing, parallel_state

    from harness.training import cpu_compat, model as mdl

    if not dist.is_initialized():
        store = Path(checkpoint).parent / f".export-pg-{os.getpid()}"
        dist.init_process_group("gloo", store=dist.FileStore(str(store), 1), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    cpu_compat.apply()
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    if not get_cuda_rng_tracker().get_states():  # attention forks this tracker even without dropout
        model_parallel_cuda_manual_seed(0)
    model, _ = mdl.build(mdl.ModelShape(**spec["model"]), "fp32", on_cpu=True)
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(checkpoint))
    model.load_state_dict(state["model"])
    return model.eval()


def megatron_state_dict(spec: dict, checkpoint: Path) -> dict:
    model = load_model(spec, checkpoint)
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def to_llama(sd: dict, shape) -> tuple[dict, dict]:
    """(transformers LlamaConfig kwargs, Llama state dict) from a megatron GPTModel state dict."""
    h, heads, groups, hd = shape.hidden_size, shape.num_attention_heads, shape.num_query_groups, shape.head_dim
    per_group = heads // groups
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_layernorm.weight"], "lm_head.weight": sd["output_layer.weight"]}
    for i in range(shape.num_layers):
        m, o = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = sd[m + "self_attention.linear_qkv.weight"].view(groups, (per_group + 2) * hd, h)
        q, k, v = torch.split(qkv, [per_group * hd, hd, hd], dim=1)
        out[o + "self_attn.q_proj.weight"] = q.reshape(heads * hd, h)
        out[o + "self_attn.k_proj.weight"] = k.reshape(groups * hd, h)
        out[o + "self_attn.v_proj.weight"] = v.reshape(groups * hd, h)
        out[o + "self_attn.o_proj.weight"] = sd[m + "self_attention.linear_proj.weight"]
        gate, up = torch.chunk(sd[m + "mlp.linear_fc1.weight"], 2, dim=0)
        out[o + "mlp.gate_proj.weight"], out[o + "mlp.up_proj.weight"] = gate, up
        out[o + "mlp.down_proj.weight"] = sd[m + "mlp.linear_fc2.weight"]
        out[o + "input_layernorm.weight"] = sd[m + "input_layernorm.weight"]
        out[o + "post_attention_layernorm.weight"] = sd[m + "pre_mlp_layernorm.weight"]
    config = dict(vocab_size=shape.vocab_size, hidden_size=h, intermediate_size=shape.ffn_hidden_size,
                  num_hidden_layers=shape.num_layers, num_attention_heads=heads, num_key_value_heads=groups,
                  head_dim=hd, max_position_embeddings=shape.seq_length, rms_norm_eps=shape.norm_epsilon,
                  rope_theta=shape.rotary_base, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                  hidden_act="silu", torch_dtype="float32")
    return config, {k: v.contiguous().clone() for k, v in out.items()}


def export(spec: dict, checkpoint: Path, out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from harness.training import model as mdl

    shape = mdl.ModelShape(**spec["model"])
    config_kwargs, weights = to_llama(megatron_state_dict(spec, checkpoint), shape)
    tok = spec["tokenizer"]
    config = LlamaConfig(**config_kwargs, bos_token_id=tok["eod_id"], eos_token_id=tok["eod_id"])
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError(f"export mapping incomplete: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=tok["path"], eos_token=tok["eod_token"],
                                     bos_token=tok["eod_token"], pad_token=tok["eod_token"])
    hf_tok.model_max_length = shape.seq_length
    hf_tok.save_pretrained(out)
    return out
