"""The recipe's `train:` and `wandb:` sections: typed, with their checks (harness/recipe.py composes them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from harness.checks import bad_number

SCHEDULES = ("cosine", "wsd", "linear", "constant", "anneal")
RECOMPUTE = ("none", "selective", "full")
# How a run is carried out, not what it computes: kept out of the stage digest (changing them re-runs nothing) and
# out of the checkpoint identity (a resume may change them).
RUNTIME_KEYS = ("save_interval", "keep_last", "log_interval", "overlap_grad_reduce", "overlap_param_gather",
                "recompute", "recompute_num_layers", "async_save")


@dataclass
class TrainConfig:
    micro_batch_size: int = 8
    global_batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_fraction: float = 0.05
    # cosine | wsd | linear | constant | anneal: warmup, then linear from lr to 0 (WSD's decay phase, for
    # continuation arms; min_lr does not apply)
    schedule: str = "cosine"
    wsd_decay_fraction: float = 0.2  # for wsd: the share of steps spent decaying
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    precision: str = "fp32"  # fp32 | bf16
    distributed_optimizer: bool = False  # optimizer state sharded over data-parallel ranks (megatron's ZeRO-1)
    # ranks that split each layer's weights (megatron's tensor parallelism, within a node): for bases that do not
    # fit one GPU; the data-parallel size is then the training processes / tensor_parallel
    tensor_parallel: int = 1
    eval_interval: int = 50  # steps between validation losses
    eval_samples: int = 64  # validation samples per source (its valid split)
    save_interval: int = 100  # steps between checkpoints (and always at the end)
    keep_last: int = 2
    log_interval: int = 10
    # throughput settings (megatron's own; same numbers, different speed)
    overlap_grad_reduce: bool = False  # gradient reduction overlapped with the backward pass
    overlap_param_gather: bool = False  # distributed optimizer: parameter all-gather overlapped with the forward
    recompute: str = "none"  # activation recomputation: none | selective (core attention) | full (whole layers)
    recompute_num_layers: int = 1  # full: layers per recomputed chunk (megatron's uniform method)
    async_save: bool = False  # checkpoints written in the background while training goes on


@dataclass
class WandbConfig:
    mode: str = "disabled"  # disabled | offline | online (falls back to offline files when W&B cannot be reached)
    project: str = "task-seeded"
    init_timeout: float = 60.0  # seconds an online run may take to reach W&B before it falls back to offline



def validate_train(t: TrainConfig, bad: Callable[[str, str], None]) -> None:
    if t.precision not in ("fp32", "bf16"):
        bad("train.precision", f"unknown precision '{t.precision}' (fp32, bf16)")
    if t.schedule not in SCHEDULES:
        bad("train.schedule", f"unknown schedule '{t.schedule}' ({', '.join(SCHEDULES)})")
    if t.micro_batch_size < 1 or t.global_batch_size % max(1, t.micro_batch_size):
        bad("train.global_batch_size", f"{t.global_batch_size} is not a multiple of train.micro_batch_size "
                                       f"{t.micro_batch_size}")
    for key in ("lr", "min_lr", "weight_decay", "clip_grad"):
        v = getattr(t, key)
        if bad_number(v) or v < 0:
            bad(f"train.{key}", f"must be a number >= 0, got {v}")
    if t.schedule != "anneal" and not bad_number(t.lr) and not bad_number(t.min_lr) and t.min_lr > t.lr:
        bad("train.min_lr", f"{t.min_lr:g} is above train.lr {t.lr:g}: the {t.schedule} schedule decays from lr to "
                            f"min_lr (schedule anneal decays to 0)")
    if not 0 <= t.warmup_fraction < 1:
        bad("train.warmup_fraction", f"must be in [0, 1), got {t.warmup_fraction}")
    for key in ("eval_interval", "save_interval", "keep_last", "log_interval", "eval_samples",
                "recompute_num_layers", "tensor_parallel"):
        if getattr(t, key) < 1:
            bad(f"train.{key}", "must be at least 1")
    if t.recompute not in RECOMPUTE:
        bad("train.recompute", f"unknown recomputation '{t.recompute}' ({', '.join(RECOMPUTE)})")
    if t.overlap_param_gather and not (t.distributed_optimizer and t.overlap_grad_reduce):
        bad("train.overlap_param_gather", "needs train.distributed_optimizer and train.overlap_grad_reduce "
                                          "(megatron overlaps the all-gather of the optimizer's shards)")


def validate_train_for_model(t: TrainConfig, num_layers: int, bad: Callable[[str, str], None],
                             heads: int = 1, query_groups: int = 1, ffn: int = 0, vocab: int = 0) -> None:
    if t.recompute == "full" and num_layers % t.recompute_num_layers:
        bad("train.recompute_num_layers", f"{t.recompute_num_layers} does not divide the model's {num_layers} "
                                          f"layers")
    tp = t.tensor_parallel
    if tp > 1 and (heads % tp or query_groups % tp):  # each rank holds whole heads and whole key/value groups
        bad("train.tensor_parallel", f"{tp} does not divide the model's {heads} attention heads and "
                                     f"{query_groups} key/value groups")
    for what, n in (("MLP width", ffn), ("vocabulary", vocab)):  # split by rows/columns over the ranks
        if tp > 1 and n % tp:
            bad("train.tensor_parallel", f"{tp} does not divide the model's {what} {n}")


def validate_parallel(t: TrainConfig, processes: int, bad: Callable[[str, str], None]) -> None:
    """`processes`: the training processes of one run (per node x nodes)."""
    tp = t.tensor_parallel
    if tp < 1 or processes % tp:
        bad("train.tensor_parallel", f"{tp} does not divide the run's {processes} training process(es)")
        return
    dp = processes // tp
    if t.micro_batch_size >= 1 and t.global_batch_size % (t.micro_batch_size * dp):
        bad("train.global_batch_size", f"{t.global_batch_size} is not a multiple of micro_batch_size "
                                       f"{t.micro_batch_size} x {dp} data-parallel processes")


def validate_wandb(w: WandbConfig, bad: Callable[[str, str], None]) -> None:
    if w.mode not in ("disabled", "offline", "online"):
        bad("wandb.mode", f"unknown mode '{w.mode}' (disabled, offline, online)")
    if bad_number(w.init_timeout) or w.init_timeout <= 0:
        bad("wandb.init_timeout", f"must be a positive number of seconds, got {w.init_timeout}")
