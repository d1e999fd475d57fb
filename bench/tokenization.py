"""Tokenization benchmark: the harness end to end against the bare `tokenizers` batch encoding of the same texts
and against a reference in the style of Megatron-LM's preprocess_data (a process pool encoding one document at a
time, the main process writing with megatron.core's IndexedDatasetBuilder), side by side in one run; then the
harness's peak memory at 1x and 4x the corpus size.

    python bench/tokenization.py [--mb 30] [--workers 1]

Each measurement runs in a fresh process on the same cores, start-up included, and is repeated (best of --repeat).
Targets: harness >= 0.9x bare batch encoding; >= 1.2x the preprocess_data-style reference; memory growth < 20%.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOTU = ROOT / ".cache" / "assets" / "sotu.jsonl"

BARE = r"""
import json, sys, time
t0 = time.perf_counter()
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
texts = [json.loads(l)["text"] for l in open(sys.argv[2], "rb")]
t1 = time.perf_counter()
getattr(tok, sys.argv[3])(texts, add_special_tokens=False)
print(json.dumps({"encode_seconds": time.perf_counter() - t1, "load_seconds": t1 - t0}))
"""

# A reference written here in the style of Megatron-LM's tools/preprocess_data.py: Pool(workers).imap over lines,
# chunksize 25, each worker json-decodes and encodes one document; the main process appends every document with
# megatron.core's IndexedDatasetBuilder.add_document and finalizes the index.
PREPROCESS_STYLE = r"""
import json, multiprocessing, sys
import numpy as np

def init(path):
    global tok, eod
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(path)
    eod = tok.token_to_id("<|endoftext|>")

def encode(line):
    text = json.loads(line)["text"]
    ids = tok.encode(text, add_special_tokens=False).ids + [eod]
    return ids, len(line)

if __name__ == "__main__":
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    tok_path, corpus, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    builder = IndexedDatasetBuilder(out + ".bin", dtype=np.uint16)
    with open(corpus, encoding="utf-8") as f, multiprocessing.Pool(workers, initializer=init, initargs=(tok_path,)) as pool:
        for ids, _ in pool.imap(encode, f, 25):
            builder.add_document(np.array(ids, dtype=np.uint16), [len(ids)])
    builder.finalize(out + ".idx")
"""


def make_corpus(path: Path, mb: float, seed: int = 0) -> int:
    """Prose documents of a few kilobytes (State of the Union passages, shuffled) up to `mb` megabytes of JSONL."""
    import re

    passages = []
    for line in open(SOTU):
        sentences = re.split(r"(?<=[.!?]) +", json.loads(line)["text"])
        for i in range(0, len(sentences), 20):
            passage = " ".join(sentences[i:i + 20]).strip()
            if passage:
                passages.append(passage)
    rng = random.Random(seed)
    written = 0
    with open(path, "w") as f:
        while written < mb * 1e6:
            rng.shuffle(passages)
            for p in passages:
                line = json.dumps({"text": p}) + "\n"
                f.write(line)
                written += len(line.encode())
                if written >= mb * 1e6:
                    break
    return written


def timed(cmd: list[str], env: dict) -> tuple[float, str, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    secs = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return secs, res.stdout, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def peak_rss_of(cmd: list[str], env: dict) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of a command and its children, measured by GNU time in a fresh process."""
    wrapper = [sys.executable, "-c",
               "import resource,subprocess,sys,time;t=time.perf_counter();r=subprocess.run(sys.argv[1:]);"
               "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);sys.exit(r.returncode)",
               *cmd]
    res = subprocess.run(wrapper, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    secs, rss = res.stdout.split()[-2:]
    return float(secs), int(rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=30)
    ap.add_argument("--workers", type=int, default=1, help="harness tokenize --workers")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    if not SOTU.is_file():
        sys.exit(f"{SOTU} is missing: run `make setup` (or `harness assets`) first")
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "RAYON_NUM_THREADS": str(cores), "TOKENIZERS_PARALLELISM": "true"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        size = make_corpus(corpus, args.mb)
        sys.path.insert(0, str(ROOT))
        from harness.data.tokenizer import train_bpe

        tok = tmp / "tokenizer.json"
        train_bpe((json.loads(l)["text"] for l in open(SOTU)), args.vocab, "<|endoftext|>", tok)
        print(f"corpus {size / 1e6:.1f} MB of JSONL, BPE vocabulary {args.vocab}, {cores} cores")

        best: dict[str, float] = {}
        for r in range(args.repeat):
            for name, cmd in [
                ("bare encode_batch", [sys.executable, "-c", BARE, str(tok), str(corpus), "encode_batch"]),
                ("bare encode_batch_fast", [sys.executable, "-c", BARE, str(tok), str(corpus), "encode_batch_fast"]),
                ("harness tokenize", [sys.executable, "-m", "harness", "tokenize", str(corpus), "--tokenizer", str(tok),
                                      "-o", str(tmp / f"h{r}"), "--workers", str(args.workers)]),
                ("preprocess_data style", [sys.executable, "-c", PREPROCESS_STYLE, str(tok), str(corpus),
                                           str(tmp / f"p{r}"), str(cores)]),
            ]:
                secs, stdout, _ = timed(cmd, env)
                if name.startswith("bare"):
                    secs = json.loads(stdout)["encode_seconds"]  # the encoding alone: the most favourable reference
                best[name] = min(best.get(name, float("inf")), secs)
        rate = {k: size / 1e6 / v for k, v in best.items()}
        for k in best:
            print(f"  {k:<24} {best[k]:7.2f} s  {rate[k]:6.2f} MB/s")
        h = rate["harness tokenize"]
        print(f"ratio harness / bare encode_batch (encoding only)       {h / rate['bare encode_batch']:.2f}  (target >= 0.9)")
        print(f"ratio harness / bare encode_batch_fast (encoding only)  {h / rate['bare encode_batch_fast']:.2f}")
        print(f"ratio harness / preprocess_data style                   {h / rate['preprocess_data style']:.2f}  (target >= 1.2)")
        same = (tmp / "h0.bin").read_bytes() == (tmp / "p0.bin").read_bytes()
        print(f"harness and reference outputs identical: {same}")

        if not args.skip_memory:
            big = tmp / "corpus4x.jsonl"
            with open(big, "wb") as out:
                for _ in range(4):
                    out.write(corpus.read_bytes())
            rss = {}
            for label, path in (("1x", corpus), ("4x", big)):
                secs, rss[label] = peak_rss_of([sys.executable, "-m", "harness", "tokenize", str(path), "--tokenizer",
                                                str(tok), "-o", str(tmp / f"m{label}"), "--workers", str(args.workers)],
                                               env)
                print(f"  peak RSS at {label}: {rss[label] / 1024:.0f} MiB ({secs:.1f} s)")
            print(f"ratio peak memory 4x / 1x                               {rss['4x'] / rss['1x']:.2f}  (target < 1.2)")


if __name__ == "__main__":
    main()
