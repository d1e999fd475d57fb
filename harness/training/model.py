"""Llama-style GPT models built with megatron.core: RoPE, SwiGLU, RMSNorm.

A preset (recipes/models/*.yaml) gives the shape of a model trained from scratch (no biases, untied embeddings); the
vocabulary comes from the recipe's tokenizer, padded up to a multiple of `vocab_multiple` as Megatron does for
efficient matmuls (the extra rows are never targets). A continuation arm takes its shape from the pretrained base
(harness/training/hf_convert.py), with the features its architecture uses: a head size other than hidden/heads,
bias on q/k/v, per-head QK-norm, tied embeddings, Llama 3's RoPE scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class ModelShape:
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    vocab_size: int  # padded
    seq_length: int
    rotary_base: float = 10000.0
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    kv_channels: Optional[int] = None  # the head size, when it is not hidden / heads (Qwen3)
    qkv_bias: bool = False
    qk_norm: bool = False
    tied_embeddings: bool = False
    rope_scaling_factor: Optional[float] = None  # Llama 3's RoPE scaling

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def parameters(self) -> int:
        h, f, v, L, hd = self.hidden_size, self.ffn_hidden_size, self.vocab_size, self.num_layers, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_query_groups * hd
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * f + 2 * h
        per_layer += (q + 2 * kv) * self.qkv_bias + 2 * hd * self.qk_norm
        return L * per_layer + (1 if self.tied_embeddings else 2) * v * h + h

    def matmul_parameters(self) -> int:
        """Weights that take part in a matrix multiplication: every linear layer and the output layer (also when it
        shares the embedding's weights); not the input embedding (a lookup) nor the norms and biases (element-wise)."""
        h, f, v, L = self.hidden_size, self.ffn_hidden_size, self.vocab_size, self.num_layers
        q, kv = self.num_attention_heads * self.head_dim, self.num_query_groups * self.head_dim
        return L * (h * (q + 2 * kv) + q * h + 3 * h * f) + v * h

    def flops_per_token(self) -> float:
        """Model FLOPs of one trained token (forward + backward = 3 x forward, 2 FLOPs per multiply-add):
        6 x the matmul weights, plus causal self-attention's scores and weighted sum, 2 x 2 x s x d_q per layer
        forward over the full square, half of it under the causal mask: 6 L s d_q in all. This is Megatron-LM's
        formula (num_floating_point_operations) with the attention term halved for the causal mask."""
        q = self.num_attention_heads * self.head_dim
        return 6 * self.matmul_parameters() + 6 * self.num_layers * self.seq_length * q


def padded_vocab(vocab_size: int, multiple: int) -> int:
    return int(math.ceil(vocab_size / multiple) * multiple)


def shape_from(model_cfg: dict, tokenizer_vocab: int, seq_length: int, vocab_multiple: int = 128) -> ModelShape:
    heads = model_cfg["num_attention_heads"]
    hidden = model_cfg["hidden_size"]
    if hidden % heads:
        raise ValueError(f"model.hidden_size {hidden} is not a multiple of model.num_attention_heads {heads}")
    groups = model_cfg.get("num_query_groups") or heads
    if heads % groups:
        raise ValueError(f"model.num_attention_heads {heads} is not a multiple of model.num_query_groups {groups}")
    vocab = model_cfg.get("vocab_size") or padded_vocab(tokenizer_vocab, vocab_multiple)
    if vocab < tokenizer_vocab:
        raise ValueError(f"model.vocab_size {vocab} is smaller than the tokenizer's vocabulary {tokenizer_vocab}")
    ffn = model_cfg.get("ffn_hidden_size") or int(math.ceil(8 * hidden / 3 / 64) * 64)
    return ModelShape(model_cfg["num_layers"], hidden, heads, groups, ffn, vocab, seq_length,
                      float(model_cfg.get("rotary_base") or 10000.0), float(model_cfg.get("norm_epsilon") or 1e-5),
                      float(model_cfg.get("init_method_std") or 0.02))


def recompute_settings(recompute: str, num_layers: int) -> dict:
    """megatron's activation recomputation: selective recomputes core attention (its activations grow with the
    sequence squared), full recomputes whole layers, `num_layers` at a time (the uniform method)."""
    if recompute == "none":
        return {}
    if recompute == "selective":
        return {"recompute_granularity": "selective"}
    if recompute == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": num_layers}
    raise ValueError(f"unknown train.recompute '{recompute}' (none, selective, full)")


def transformer_config(shape: ModelShape, precision: str, on_cpu: bool, recompute: str = "none",
                       recompute_num_layers: int = 1, tensor_parallel: int = 1):
    from megatron.core.transformer.transformer_config import TransformerConfig

    cpu = dict(use_cpu_initialization=True, gradient_accumulation_fusion=False, bias_activation_fusion=False,
               bias_dropout_fusion=False, masked_softmax_fusion=False, apply_rope_fusion=False) if on_cpu else {}
    return TransformerConfig(
        num_layers=shape.num_layers, hidden_size=shape.hidden_size, num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups, ffn_hidden_size=shape.ffn_hidden_size,
        normalization="RMSNorm", layernorm_epsilon=shape.norm_epsilon, gated_linear_unit=True,
        activation_func=F.silu, add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
        init_method_std=shape.init_method_std, bf16=precision == "bf16", kv_channels=shape.head_dim,
        add_qkv_bias=shape.qkv_bias, qk_layernorm=shape.qk_norm, tensor_model_parallel_size=tensor_parallel,
        params_dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
        pipeline_dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
        **recompute_settings(recompute, recompute_num_layers), **cpu)


def layer_spec(use_te: bool, qk_norm: bool = False):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    if use_te:  # GPU nodes with transformer-engine: its fused layers, same math
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_norm)
    from harness.training.attention import SDPAttention

    spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=qk_norm)
    spec.submodules.self_attention.submodules.core_attention = SDPAttention  # torch's fused attention kernels
    return spec


def te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
        return torch.cuda.is_available()
    except Exception:
        return False


def build(shape: ModelShape, precision: str = "fp32", on_cpu: bool = True, recompute: str = "none",
          recompute_num_layers: int = 1, tensor_parallel: int = 1):
    """With tensor_parallel > 1 each rank builds its shards of every layer (megatron's parallel state must be
    initialised with that size); on a CPU the full weights are initialised and split, so the model is the same as
    with one rank."""
    from megatron.core.models.gpt import GPTModel

    config = transformer_config(shape, precision, on_cpu, recompute, recompute_num_layers, tensor_parallel)
    model = GPTModel(config=config, transformer_layer_spec=layer_spec(not on_cpu and te_available(), shape.qk_norm),
                     vocab_size=shape.vocab_size, max_sequence_length=shape.seq_length, pre_process=True,
                     post_process=True, share_embeddings_and_output_weights=shape.tied_embeddings,
                     position_embedding_type="rope", rotary_base=int(shape.rotary_base),
                     rope_scaling=shape.rope_scaling_factor is not None,
                     rope_scaling_factor=shape.rope_scaling_factor or 8.0)
    return model, config
