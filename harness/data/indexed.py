"""Megatron's indexed dataset format (.bin tokens + .idx index), written without importing torch.

The .idx layout is the one megatron.core.datasets.indexed_dataset reads ("MMIDIDX" version 1): header, dtype code,
sequence count, document count, int32 sequence lengths, int64 byte pointers, int64 document indices. One sequence
per document, as Megatron-LM's preprocess_data writes for GPT pretraining. Tests read our files back with
megatron.core's own reader.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np

HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
               np.uint16: 8}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}


def token_dtype(vocab_size: int) -> type:
    """Megatron's choice (DType.optimal_dtype): uint16 when the vocabulary fits, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def write_index(idx_path: str | os.PathLike, dtype: type, lengths: np.ndarray) -> None:
    lengths = np.asarray(lengths, dtype=np.int32)
    n = len(lengths)
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * itemsize, out=pointers[1:])
    with open(idx_path, "wb") as f:
        f.write(HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", n))
        f.write(struct.pack("<Q", n + 1))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(n + 1, dtype=np.int64).tobytes())
        f.flush()
        os.fsync(f.fileno())


def read_index(idx_path: str | os.PathLike) -> tuple[type, np.ndarray]:
    """(token dtype, per-document lengths) of an .idx file."""
    with open(idx_path, "rb") as f:
        head = f.read(len(HEADER) + 8 + 1 + 8 + 8)
        if head[: len(HEADER)] != HEADER:
            raise ValueError(f"{idx_path}: not a Megatron index file")
        (code,) = struct.unpack("<B", head[len(HEADER) + 8: len(HEADER) + 9])
        (n,) = struct.unpack("<Q", head[len(HEADER) + 9: len(HEADER) + 17])
        lengths = np.frombuffer(f.read(4 * n), dtype=np.int32)
    return CODE_DTYPES[code], lengths


class BinWriter:
    """Appends documents' tokens to a .bin file and keeps their lengths for the index."""

    def __init__(self, prefix: str | os.PathLike, dtype: type):
        self.prefix = str(prefix)
        self.dtype = dtype
        self._f = open(self.prefix + ".bin", "wb")
        self._lengths: list[np.ndarray] = []

    def write_batch(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.append(np.asarray(lengths, dtype=np.int32))

    def close(self) -> np.ndarray:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        write_index(self.prefix + ".idx", self.dtype, lengths)
        return lengths


def merge(prefixes: list[str], out_prefix: str | os.PathLike) -> np.ndarray:
    """Concatenate indexed datasets in order into one; returns the merged document lengths."""
    out_prefix = str(out_prefix)
    parts = [read_index(p + ".idx") for p in prefixes]
    dtypes = {d for d, _ in parts}
    if len(dtypes) > 1:
        raise ValueError(f"cannot merge indexed datasets of different dtypes: {sorted(map(str, dtypes))}")
    dtype = dtypes.pop() if dtypes else np.int32
    with open(out_prefix + ".bin", "wb") as out:
        for p in prefixes:
            with open(p + ".bin", "rb") as f:
                shutil.copyfileobj(f, out, 16 * 2**20)
        out.flush()
        os.fsync(out.fileno())
    lengths = np.concatenate([l for _, l in parts]) if parts else np.zeros(0, np.int32)
    write_index(out_prefix + ".idx", dtype, lengths)
    return lengths


def exists(prefix: str | os.PathLike) -> bool:
    return Path(str(prefix) + ".bin").is_file() and Path(str(prefix) + ".idx").is_file()
