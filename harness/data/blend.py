"""Blend accounting: from a token budget and an arm's shares to megatron.core blend weights, an epochs check, and
the realised shares read back from megatron.core's BlendedMegatronDatasetBuilder.

A GPT sample is `seq_length` new tokens from one source, so a source's share of samples is its share of the tokens
the model sees. Megatron's blending index assigns samples greedily to the source furthest below its weight, which
realises the weights to within one sample; we still read the index back and refuse a blend off by more than 1%.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from harness.data import indexed

SHARE_TOLERANCE = 0.01


class BlendError(ValueError):
    pass


def split_bounds(split: str, n_docs: int) -> list[tuple[int, int]]:
    """Document ranges of the train/valid/test splits, computed as megatron.core does (rounded book-ends)."""
    parts = [float(x) for x in split.split(",")]
    total = sum(parts)
    edges = np.cumsum([0.0] + [p / total for p in parts])
    return [(int(round(edges[i] * n_docs)), int(round(edges[i + 1] * n_docs))) for i in range(3)]


def _empty_split(prefix: str, split: str, which: int) -> bool:
    _, lengths = indexed.read_index(prefix + ".idx")
    lo, hi = split_bounds(split, len(lengths))[which]
    return float(split.split(",")[which]) > 0 and int(lengths[lo:hi].sum()) == 0


def train_tokens(prefix: str, split: str) -> tuple[int, int]:
    """(tokens, documents) in the train split of an indexed dataset."""
    _, lengths = indexed.read_index(prefix + ".idx")
    lo, hi = split_bounds(split, len(lengths))[0]
    return int(lengths[lo:hi].sum()), hi - lo


@dataclass
class SourcePlan:
    name: str
    prefix: str
    share: float
    target_tokens: int
    available_tokens: int  # in the train split
    epochs: float


def plan_blend(sources: dict[str, str], shares: dict[str, float], budget_tokens: int, split: str,
               max_epochs: float) -> list[SourcePlan]:
    """Per source: tokens wanted, tokens available and the epochs that implies; refuse too many repeats."""
    plans, problems = [], []
    for name, share in shares.items():
        if share <= 0:
            continue
        available, docs = train_tokens(sources[name], split)
        target = int(round(share * budget_tokens))
        epochs = target / available if available else math.inf
        if epochs > max_epochs:
            more = math.ceil(target / max_epochs - available)
            problems.append(f"source '{name}' would be repeated {epochs:.2f} times (limit {max_epochs:g}): it has "
                            f"{available:,} training tokens in {docs:,} documents and the arm wants {target:,}; "
                            f"add at least {more:,} tokens of data, or lower the share or the budget")
        plans.append(SourcePlan(name, sources[name], share, target, available, epochs))
    if problems:
        raise BlendError("; ".join(problems))
    return plans


def estimate_problem(name: str, requests: int, tokens_per_request: float, shares: dict[str, float],
                     budget_tokens: int, max_epochs: float) -> str | None:
    """Before generation: would the synthetic set `name`, at its expected size (requests x expected rendered tokens
    per request), be repeated more than `max_epochs` times by the arm that takes the largest share of it? The message
    names the arm, the figures and what would fix it; None when it fits (or no arm uses it)."""
    if not shares or tokens_per_request is None:
        return None
    arm, share = max(shares.items(), key=lambda kv: kv[1])
    expected = requests * tokens_per_request
    wanted = share * budget_tokens
    epochs = wanted / expected if expected else math.inf
    if epochs <= max_epochs:
        return None
    factor = wanted / max_epochs / expected if expected else math.inf
    return (f"synthetic.{name}: about {expected:,.0f} tokens expected ({requests:,} requests x {tokens_per_request:g} "
            f"tokens per request, synthetic.{name}.tokens_per_request), but arm '{arm}' takes {share:g} of "
            f"{budget_tokens:,} tokens = {wanted:,.0f}: {epochs:.1f} epochs, over data.max_epochs {max_epochs:g}. "
            f"Generate about {factor:.1f}x more (samples_per_seed, passages), lower the share, or raise "
            f"data.max_epochs - before the generation is spent")


def build(plans: list[SourcePlan], budget_tokens: int, seq_length: int, split: str, seed: int, cache_dir: str,
          tokenizer, valid_samples: int = 0):
    """Build the train (and optionally valid) datasets with megatron.core; returns the built datasets."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    os.makedirs(cache_dir, exist_ok=True)
    _ensure_process_group(cache_dir)
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=([p.prefix for p in plans], [p.share for p in plans]),
        split=split,
        path_to_cache=cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # causal attention without an explicit mask (the same result, cheaper)
        mid_level_dataset_surplus=0.005,
    )
    if not valid_samples and any(_empty_split(p.prefix, split, 1) for p in plans):
        # megatron builds every split with a non-zero ratio, and loops forever on one with no tokens (a source of
        # a few documents): build the train split alone (same documents; only then does the cache key change)
        config.split_matrix = [config.split_matrix[0], None, None]
    n_train = math.ceil(budget_tokens / seq_length)
    sizes = [n_train, valid_samples, 0]
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    return train, valid


def build_valid(prefix: str, max_samples: int, seq_length: int, split: str, seed: int, cache_dir: str, tokenizer):
    """Up to `max_samples` samples from the valid split of one source (fewer when the split is smaller: a
    validation set is never repeated). None when the split holds less than one sample. Megatron builds whole
    epochs, so its dataset holds the whole split (1,562 samples when 4 were asked for, in a test): the first
    `max_samples` of its shuffled order are kept, or every validation would run over the whole split - at the paper's
    scale, 2% of a corpus at every eval interval."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from torch.utils.data import Subset

    _, lengths = indexed.read_index(prefix + ".idx")
    lo, hi = split_bounds(split, len(lengths))[1]
    n = min(max_samples, (int(lengths[lo:hi].sum()) - 1) // seq_length)
    if n < 1:
        return None
    os.makedirs(cache_dir, exist_ok=True)
    _ensure_process_group(cache_dir)
    config = GPTDatasetConfig(random_seed=seed, sequence_length=seq_length, blend=([prefix], None), split=split,
                              path_to_cache=cache_dir, tokenizer=tokenizer, reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False)
    _, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [0, n, 0], lambda: True, config).build()
    return Subset(valid, range(min(n, len(valid))))


def _ensure_process_group(workdir: str) -> None:
    """megatron's cached indices consult torch.distributed's rank: give a lone process a one-member gloo group
    (a file store, so no port is opened)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        store = dist.FileStore(os.path.join(workdir, ".pg-store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)


def build_checked(plans: list[SourcePlan], budget_tokens: int, seq_length: int, split: str, seed: int,
                  cache_dir: str, tokenizer):
    """Build the train blend and check the shares it realises; returns (dataset, realised shares)."""
    train, _ = build(plans, budget_tokens, seq_length, split, seed, cache_dir, tokenizer)
    realised = realised_shares(train, plans)
    check_shares(realised, plans, len(train))
    return train, realised


def realised_shares(dataset, plans: list[SourcePlan]) -> dict[str, float]:
    """Fraction of the samples drawn from each source, read from the built dataset's own index."""
    if len(plans) == 1:
        return {plans[0].name: 1.0}
    ids = np.asarray(dataset.dataset_index)
    counts = np.bincount(ids, minlength=len(plans))
    return {p.name: float(counts[i] / len(ids)) for i, p in enumerate(plans)}


def check_shares(realised: dict[str, float], plans: list[SourcePlan], n_samples: int) -> None:
    """Each source's realised share must match its target within 1% (relative), or one sample at small sizes."""
    for p in plans:
        tolerance = max(SHARE_TOLERANCE * p.share, 1.0 / max(1, n_samples))
        if abs(realised[p.name] - p.share) > tolerance:
            raise BlendError(f"source '{p.name}': realised share {realised[p.name]:.5f} differs from the target "
                             f"{p.share:.5f} by more than {tolerance:.5f}")
