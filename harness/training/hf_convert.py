"""Weights between transformers' Llama-family checkpoints and our megatron.core GPTModel, both ways.

The mapping (megatron local layer spec <-> transformers): embedding <-> embed_tokens; per layer input_layernorm;
self_attention.linear_qkv (packed per query group: [q x heads-per-group, k, v], its bias likewise) <-> q/k/v_proj;
q_layernorm/k_layernorm (per head) <-> q_norm/k_norm; linear_proj <-> o_proj; pre_mlp_layernorm <->
post_attention_layernorm; mlp.linear_fc1 ([gate; up]) <-> gate_proj/up_proj; linear_fc2 <-> down_proj;
decoder.final_layernorm <-> norm; output_layer <-> lm_head (absent when the embeddings are tied). Both sides use
rotate-half RoPE and RMSNorm, so logits agree to float precision (tested per architecture).

An architecture is supported when every feature its config uses maps onto megatron.core's GPT; anything else is
refused by name before any weight is read (`shape_from_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Architecture:
    qkv_bias: Callable[[dict], bool]  # bias on q/k/v (not on o_proj)
    qk_norm: bool  # RMSNorm of each head's query and key before RoPE (Qwen3)
    note: str


# transformers' model_type -> what its layers hold. Refused types carry the reason in REFUSED.
ARCHITECTURES = {
    "llama": Architecture(lambda c: False, False, "Llama 2/3, SmolLM2"),
    "mistral": Architecture(lambda c: False, False, "Mistral dense"),
    "qwen2": Architecture(lambda c: True, False, "Qwen2, Qwen2.5 dense (bias on q/k/v)"),
    "qwen3": Architecture(lambda c: False, True, "Qwen3 dense (per-head QK-norm)"),
}
REFUSED = {
    "olmo2": "OLMo 2 normalises after attention and after the MLP (post-norm) and its QK-norm spans the whole "
             "projection, not each head; megatron.core's GPT layer normalises before each block, per head",
    "qwen2_moe": "mixture-of-experts layers are not mapped", "qwen3_moe": "mixture-of-experts layers are not mapped",
    "mixtral": "mixture-of-experts layers are not mapped",
}


def rope_parameters(config: dict) -> dict:
    """RoPE settings from a config.json written by transformers 5 (`rope_parameters`) or 4 (`rope_theta` and
    `rope_scaling`)."""
    rp = dict(config.get("rope_parameters") or {})
    if not rp:
        rp = dict(config.get("rope_scaling") or {})
        if "type" in rp and "rope_type" not in rp:
            rp["rope_type"] = rp.pop("type")
        rp.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    rp.setdefault("rope_type", "default")
    return rp


def shape_from_config(config: dict, seq_length: int):
    """The ModelShape of a transformers config.json, or ValueError listing every feature that does not map."""
    from harness.training.model import ModelShape

    mt = config.get("model_type", "?")
    if mt in REFUSED:
        raise ValueError(f"model_type '{mt}' is not supported: {REFUSED[mt]}")
    if mt not in ARCHITECTURES:
        known = ", ".join(f"{k} ({a.note})" for k, a in ARCHITECTURES.items())
        raise ValueError(f"model_type '{mt}' is not supported (supported: {known})")
    arch = ARCHITECTURES[mt]
    problems = []
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act '{config['hidden_act']}' (only silu: SwiGLU)")
    if config.get("mlp_bias"):
        problems.append("mlp_bias: true (the GPT's MLP has no bias)")
    if mt in ("llama", "mistral") and config.get("attention_bias"):
        problems.append("attention_bias: true (a bias on o_proj as well as q/k/v; megatron adds q/k/v bias only)")
    rp = rope_parameters(config)
    factor = None
    if rp["rope_type"] == "llama3":
        # megatron.core applies Llama 3's scaling with a configurable factor and the original constants fixed
        fixed = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        off = {k: rp.get(k) for k, v in fixed.items() if float(rp.get(k, v)) != v}
        if off:
            problems.append(f"llama3 RoPE scaling with {off} (megatron.core fixes {fixed})")
        factor = float(rp.get("factor", 8.0))
    elif rp["rope_type"] != "default":
        problems.append(f"RoPE type '{rp['rope_type']}' (default and llama3 are mapped)")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor {config['partial_rotary_factor']}")
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", mt == "mistral")
    if window and uses_window and window < seq_length:
        # within one window, sliding-window attention is full causal attention: sequences up to it are exact
        problems.append(f"sliding-window attention over {window} tokens, shorter than data.seq_length {seq_length} "
                        f"(train with sequences of at most {window} tokens)")
    if problems:
        raise ValueError(f"model_type '{mt}': " + "; ".join(problems))
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    return ModelShape(
        num_layers=config["num_hidden_layers"], hidden_size=hidden, num_attention_heads=heads,
        num_query_groups=config.get("num_key_value_heads") or heads, ffn_hidden_size=config["intermediate_size"],
        vocab_size=config["vocab_size"], seq_length=seq_length, rotary_base=float(rp.get("rope_theta", 10000.0)),
        norm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
        init_method_std=float(config.get("initializer_range", 0.02)),
        kv_channels=head_dim if head_dim * heads != hidden else None, qkv_bias=arch.qkv_bias(config),
        qk_norm=arch.qk_norm, tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_scaling_factor=factor)


def _split_qkv(t: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    heads, groups, hd = shape.num_attention_heads, shape.num_query_groups, shape.head_dim
    per_group = heads // groups
    rest = t.shape[1:]
    qkv = t.view(groups, (per_group + 2) * hd, *rest)
    q, k, v = torch.split(qkv, [per_group * hd, hd, hd], dim=1)
    return q.reshape(heads * hd, *rest), k.reshape(groups * hd, *rest), v.reshape(groups * hd, *rest)


def _pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape) -> torch.Tensor:
    heads, groups, hd = shape.num_attention_heads, shape.num_query_groups, shape.head_dim
    per_group = heads // groups
    rest = q.shape[1:]
    packed = torch.cat([q.view(groups, per_group * hd, *rest), k.view(groups, hd, *rest),
                        v.view(groups, hd, *rest)], dim=1)
    return packed.reshape(groups * (per_group + 2) * hd, *rest)


# per layer: (megatron name, transformers name) copied as they are
_SAME = [("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
         ("mlp.linear_fc2.weight", "mlp.down_proj.weight"),
         ("input_layernorm.weight", "input_layernorm.weight"),
         ("pre_mlp_layernorm.weight", "post_attention_layernorm.weight")]
_QK_NORM = [("self_attention.q_layernorm.weight", "self_attn.q_norm.weight"),
            ("self_attention.k_layernorm.weight", "self_attn.k_norm.weight")]


def to_megatron(sd: dict, shape) -> dict:
    """A megatron GPTModel state dict from a transformers Llama-family state dict (fp32 copies)."""
    out = {"embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
           "decoder.final_layernorm.weight": sd["model.norm.weight"]}
    if not shape.tied_embeddings:
        out["output_layer.weight"] = sd["lm_head.weight"]
    for i in range(shape.num_layers):
        m, o = f"decoder.layers.{i}.", f"model.layers.{i}."
        out[m + "self_attention.linear_qkv.weight"] = _pack_qkv(
            *(sd[o + f"self_attn.{x}_proj.weight"] for x in "qkv"), shape)
        if shape.qkv_bias:
            out[m + "self_attention.linear_qkv.bias"] = _pack_qkv(
                *(sd[o + f"self_attn.{x}_proj.bias"] for x in "qkv"), shape)
        out[m + "mlp.linear_fc1.weight"] = torch.cat([sd[o + "mlp.gate_proj.weight"], sd[o + "mlp.up_proj.weight"]])
        for ours, theirs in _SAME + (_QK_NORM if shape.qk_norm else []):
            out[m + ours] = sd[o + theirs]
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def to_hf(sd: dict, shape) -> dict:
    """A transformers Llama-family state dict from a megatron GPTModel state dict (the inverse of to_megatron)."""
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_layernorm.weight"]}
    out["lm_head.weight"] = sd["embedding.word_embeddings.weight" if shape.tied_embeddings else "output_layer.weight"]
    for i in range(shape.num_layers):
        m, o = f"decoder.layers.{i}.", f"model.layers.{i}."
        for x, t in zip("qkv", _split_qkv(sd[m + "self_attention.linear_qkv.weight"], shape)):
            out[o + f"self_attn.{x}_proj.weight"] = t
        if shape.qkv_bias:
            for x, t in zip("qkv", _split_qkv(sd[m + "self_attention.linear_qkv.bias"], shape)):
                out[o + f"self_attn.{x}_proj.bias"] = t
        gate, up = torch.chunk(sd[m + "mlp.linear_fc1.weight"], 2, dim=0)
        out[o + "mlp.gate_proj.weight"], out[o + "mlp.up_proj.weight"] = gate, up
        for ours, theirs in _SAME + (_QK_NORM if shape.qk_norm else []):
            out[o + theirs] = sd[m + ours]
    return {k: v.contiguous().clone() for k, v in out.items()}


def llama_config(shape, eod_id: int) -> dict:
    """transformers LlamaConfig arguments for a model trained from scratch (no base architecture to return to)."""
    return dict(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.ffn_hidden_size,
                num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_attention_heads,
                num_key_value_heads=shape.num_query_groups, head_dim=shape.head_dim,
                max_position_embeddings=shape.seq_length, rms_norm_eps=shape.norm_epsilon,
                rope_theta=shape.rotary_base, tie_word_embeddings=shape.tied_embeddings, attention_bias=False,
                mlp_bias=False, hidden_act="silu", torch_dtype="float32", bos_token_id=eod_id, eos_token_id=eod_id)
