"""Tokenization benchmark: `harness tokenize` end to end against the bare `tokenizers` call it makes itself
(`encode_batch_fast`) in a script a user would write - read the JSONL, parse it, encode every text in one batch,
write the same .bin/.idx with megatron.core's IndexedDatasetBuilder - side by side in one run; then the harness's peak
memory at 1x and 4x the corpus size.

    python bench/tokenization.py [--mb 30] [--workers 1] [--smallest]

The harness is timed as a whole process (interpreter start-up and imports included); the bare script from its first
read to its finished .idx (its imports left out): the reference gets every advantage. Both outputs must be
byte-identical (.bin and .idx), or the benchmark fails. Secondary lines: `encode_batch` (with offsets) and the
encoding call alone, and a look-alike of Megatron-LM's tools/preprocess_data.py written here (a process pool
encoding one document at a time; Megatron-LM's tool is not in the megatron-core wheel, so its own code is not run).
Targets: harness >= 0.95x the bare end-to-end script; >= 1.2x the preprocess_data look-alike; memory growth < 20%.
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
import numpy as np
from tokenizers import Tokenizer
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
tok_path, corpus, method, out = sys.argv[1:5]
tok = Tokenizer.from_file(tok_path)
eod = tok.token_to_id("<|endoftext|>")
t0 = time.perf_counter()
texts = [json.loads(line)["text"] for line in open(corpus, "rb")]
t1 = time.perf_counter()
encodings = getattr(tok, method)(texts, add_special_tokens=False)
t2 = time.perf_counter()
if out != "-":
    builder = IndexedDatasetBuilder(out + ".bin", dtype=np.uint16)
    for e in encodings:
        ids = e.ids
        ids.append(eod)
        builder.add_document(np.array(ids, dtype=np.uint16), [len(ids)])
    builder.finalize(out + ".idx")
t3 = time.perf_counter()
print(json.dumps({"end_to_end_seconds": t3 - t0, "encode_seconds": t2 - t1}))
"""

# A look-alike of Megatron-LM's tools/preprocess_data.py, written here (the tool is not in the megatron-core wheel):
# Pool(workers).imap over lines, chunksize 25, each worker json-decodes and encodes one document; the main process appends every document with
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
    ap.add_argument("--smallest", action="store_true", help="1 MB, one round, no memory check: a smoke run (CI)")
    args = ap.parse_args()
    if args.smallest:
        args.mb, args.repeat, args.skip_memory, args.vocab = 1, 1, True, 4096
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
                ("bare script, end to end", [sys.executable, "-c", BARE, str(tok), str(corpus), "encode_batch_fast",
                                             str(tmp / f"b{r}")]),
                ("harness tokenize", [sys.executable, "-m", "harness", "tokenize", str(corpus), "--tokenizer", str(tok),
                                      "-o", str(tmp / f"h{r}"), "--workers", str(args.workers)]),
                ("bare encode_batch (call)", [sys.executable, "-c", BARE, str(tok), str(corpus), "encode_batch", "-"]),
                ("preprocess_data look-alike", [sys.executable, "-c", PREPROCESS_STYLE, str(tok), str(corpus),
                                                str(tmp / f"p{r}"), str(cores)]),
            ]:
                secs, stdout, _ = timed(cmd, env)
                got = {name: secs}
                if name.startswith("bare script"):  # from its first read: imports and start-up left out
                    t = json.loads(stdout)
                    got = {name: t["end_to_end_seconds"], "bare encode_batch_fast (call)": t["encode_seconds"]}
                elif name.startswith("bare"):
                    got = {name: json.loads(stdout)["encode_seconds"]}
                for k, v in got.items():
                    best[k] = min(best.get(k, float("inf")), v)
        for r in range(args.repeat):
            for theirs in (f"b{r}", f"p{r}"):
                for ext in (".bin", ".idx"):
                    if (tmp / f"h{r}{ext}").read_bytes() != (tmp / f"{theirs}{ext}").read_bytes():
                        sys.exit(f"FAILED: harness output h{r}{ext} differs from the reference's {theirs}{ext}")
        print("outputs: the harness's .bin/.idx are byte-identical to both references' (asserted)")
        rate = {k: size / 1e6 / v for k, v in best.items()}
        for k in best:
            print(f"  {k:<30} {best[k]:7.2f} s  {rate[k]:6.2f} MB/s")
        h = rate["harness tokenize"]
        print(f"ratio harness / bare script end to end (same .bin/.idx)    {h / rate['bare script, end to end']:.2f}"
              "  (target >= 0.95)")
        print(f"ratio harness / bare encode_batch_fast call alone           {h / rate['bare encode_batch_fast (call)']:.2f}")
        print(f"ratio harness / bare encode_batch call alone                {h / rate['bare encode_batch (call)']:.2f}")
        print(f"ratio harness / preprocess_data look-alike (ours)           {h / rate['preprocess_data look-alike']:.2f}"
              "  (target >= 1.2)")

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
