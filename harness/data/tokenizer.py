"""Tokenizers: a byte-level BPE trained on the corpus (CPU runs) or a Hugging Face tokenizer.json; the adapter
that megatron.core's datasets expect (eod, vocab_size, unique_identifiers)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


def train_bpe(texts: Iterable[str], vocab_size: int, eod_token: str, out_path: str | os.PathLike) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eod_token], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(out_path))
    return describe(out_path, eod_token)


def tokenizer_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() else p


_LOADED: dict[str, object] = {}


def load(path: str | os.PathLike):
    """A tokenizers.Tokenizer from a tokenizer.json (or a folder holding one), loaded once per process."""
    from tokenizers import Tokenizer

    key = str(tokenizer_file(path))
    if key not in _LOADED:
        _LOADED[key] = Tokenizer.from_file(key)
    return _LOADED[key]


def describe(path: str | os.PathLike, eod_token: str) -> dict:
    """vocab size and EOD id of a tokenizer.json; the EOD token must exist in it."""
    tok = load(path)
    eod = tok.token_to_id(eod_token)
    if eod is None:
        raise ValueError(f"{path}: the tokenizer has no EOD token '{eod_token}' (set tokenizer.eod_token)")
    return {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "eod_id": eod, "eod_token": eod_token}


class MegatronTokenizer:
    """The few attributes megatron.core's GPTDataset reads from a tokenizer."""

    def __init__(self, tokenizer_json: str | os.PathLike, eod_id: int, vocab_size: int):
        self.path = str(tokenizer_json)
        self.eod = eod_id
        self.vocab_size = vocab_size
        self.pad = -1  # no pad token: megatron then masks nothing by pad id
        self.unique_identifiers = {"class": "harness.MegatronTokenizer", "path": self.path, "eod": eod_id}
        self.unique_description = json.dumps(self.unique_identifiers, sort_keys=True)
