"""Reading an offline W&B run back: its `run-<id>.wandb` file is a LevelDB-style log (a 7-byte header, 32 KiB
blocks, chunks with a 7-byte header: crc32, length, type) of protobuf Records from wandb's own definitions. The
installed wandb ships no reader, so the tests that check what a run holds use this one."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding at a block's end
            pos += room
            continue
        body = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            pending = body
        elif kind == FIRST:
            pending = body
            continue
        elif kind == MIDDLE:
            pending += body
            continue
        elif kind == LAST:
            pending += body
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(pending)
        yield rec
        pending = b""


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_run(folder: Path) -> dict:
    """An offline run folder's id, name, group, job type, config (dotted keys, as W&B shows them) and summary."""
    log = next(Path(folder).glob("run-*.wandb"))
    run: dict = {"config": {}, "summary": {}, "history": []}
    for rec in records(log):
        which = rec.WhichOneof("record_type")
        if which == "run":
            r = rec.run
            run.update(id=r.run_id, name=r.display_name, group=r.run_group, job_type=r.job_type)
            for item in r.config.update:
                run["config"].update(flat({item.key: json.loads(item.value_json)}))
        elif which == "config":
            for item in rec.config.update:
                run["config"].update(flat({item.key: json.loads(item.value_json)}))
        elif which == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                run["summary"][key] = json.loads(item.value_json)
        elif which == "history":
            run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    run["config"].pop("_wandb", None)
    run["config"] = {k: v for k, v in run["config"].items() if not k.startswith("_wandb.")}
    return run


def read_artifacts(folder: Path) -> list[dict]:
    """The artifacts an offline run logged, in order: per ArtifactRecord its name, type, digest (and the algorithm
    that made it) and its manifest - per file in the artifact its digest, size and the staged copy W&B uploads."""
    log = next(Path(folder).glob("run-*.wandb"))
    out = []
    for rec in records(log):
        if rec.WhichOneof("record_type") != "artifact":
            continue
        a, m = rec.artifact, rec.artifact.manifest
        out.append({"name": a.name, "type": a.type, "digest": a.digest, "digest_algorithm": a.digest_algorithm,
                    "manifest_version": m.version, "manifest_file": m.manifest_file_path,
                    "entries": {e.path: {"digest": e.digest, "size": e.size, "local_path": e.local_path}
                                for e in m.contents}})
    return out
