"""Generation at the paper recipe's scale, on a CPU: what one generation shard costs to prepare (plan and build its
requests, look them up in its request cache), what the passage stage costs, and the filter's peak memory over
every shard's items - measured on synthetic data at fractions of the paper's sizes and fitted linearly to full size.

Paper recipe (recipes/nemotron_task_seeded.yaml): ~170k seeds over ~60 subtasks (mmlu-like; a few subtasks of
30-40k seeds), 50 samples per seed, 32 shards, fewshot 3, context_share 0.5 -> 8.5M requests, 265k per shard,
4.25M grounding passages; the unseeded control: 2M passages x 1 sample (4 pairs each); ~8M items to filter.

    python bench/paper_scale.py              # default: fractions 1/16, 1/8, 1/4 (about 3-5 minutes on 2 cores)
    python bench/paper_scale.py --full       # also one shard at full size (the seeds and requests fit in memory)
    python bench/paper_scale.py --smallest   # a quick check (< 30 s; what CI runs)

Every measurement runs in a fresh subprocess; its peak memory is that process's ru_maxrss (os.wait4). Targets
(measured, or extrapolated by the linear fit): one shard's preparation under 2 minutes and 4 GiB; the filter
under 16 GiB at 8M items. The old code path (every shard built all requests and picked few-shot examples from a
list built per request) is timed on the same seeds at small sizes, for the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAPER = {"seeds": 170_000, "subtasks": 60, "samples": 50, "shards": 32, "fewshot": 3, "context_share": 0.5,
         "unseeded_passages": 2_000_000, "items": 8_000_000}
GIB = 2 ** 30


# ------------------------------------------------------------------------------------------- synthetic data


def _vocab(rng: random.Random, n: int = 5000) -> list[str]:
    syl = ["ka", "lo", "mi", "ter", "on", "ship", "ward", "ri", "ven", "cal", "dor", "pe", "us", "ta", "bre", "sol"]
    return ["".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def subtask_sizes(n: int, k: int) -> list[int]:
    """mmlu-like: two large subtasks (~20% of the seeds each), the rest spread evenly."""
    big = [n // 5, n // 5 - n // 40]
    rest = n - sum(big)
    return big + [rest // (k - 2) + (i < rest % (k - 2)) for i in range(k - 2)]


def write_seeds(path: Path, n: int, k: int) -> None:
    rng = random.Random(1)
    vocab = _vocab(rng)
    with open(path, "w") as f:
        i = 0
        for s, size in enumerate(subtask_sizes(n, k)):
            for _ in range(size):
                q = " ".join(rng.choices(vocab, k=rng.randint(8, 30))) + "?"
                choices = [" ".join(rng.choices(vocab, k=rng.randint(1, 6))) for _ in range(4)]
                a = rng.randrange(4)
                f.write(json.dumps({"seed_id": f"mmlu_{s}/train/{i}", "task": f"mmlu_{s}", "subtask": f"mmlu_{s}",
                                    "question": q, "choices": choices, "answer_index": a, "answer_text": choices[a],
                                    "context": None}) + "\n")
                i += 1


def write_corpus(path: Path, n_passages: int) -> None:
    """Documents of three paragraphs of 120 words: 3 passages each (the passage splitter's unit)."""
    import numpy as np

    rng = np.random.default_rng(2)
    vocab = np.array(_vocab(random.Random(2)))
    words = vocab[rng.integers(0, len(vocab), 2_000_000)].tolist()
    with open(path, "w") as f:
        for d in range((n_passages + 2) // 3):
            starts = rng.integers(0, len(words) - 130, 3)
            f.write(json.dumps({"text": "\n\n".join(" ".join(words[o:o + 120]) for o in starts)}) + "\n")


def write_items(folder: Path, n: int, shards: int) -> list[Path]:
    """Generated items as the generate stage writes them (one file per shard, each in item-id order); about 5% are
    near copies of an earlier item."""
    rng = random.Random(3)
    vocab = _vocab(rng)
    files = [folder / f"items.{k}.jsonl" for k in range(shards)]
    outs = [open(f, "w") for f in files]
    recent: list[str] = []
    rows = []
    for i in range(n):
        if recent and rng.random() < 0.05:
            q = rng.choice(recent)
        else:
            q = " ".join(rng.choices(vocab, k=rng.randint(10, 30))) + "?"
            recent = (recent + [q])[-1000:]
        choices = [" ".join(rng.choices(vocab, k=rng.randint(1, 5))) for _ in range(4)]
        rows.append((f"mmlu_{i % 60}/train/{i // 50}#{i % 50}", q, choices))
    for item_id, q, choices in sorted(rows):
        shard = zlib.crc32(item_id.split("#")[0].encode()) % shards
        outs[shard].write(json.dumps({"request": f"gen:{item_id}", "item_id": item_id, "seed_id": item_id.split("#")[0],
                                      "task": "mmlu", "subtask": "mmlu", "type": "mc", "n_options": 4,
                                      "passage_id": None, "question": q, "context": None, "choices": choices,
                                      "answer_index": 0, "answer_text": choices[0], "verified": True,
                                      "votes": [3, 0, 0, 0]}) + "\n")
    for o in outs:
        o.close()
    return files


# ------------------------------------------------------------------------------------------- measurements (children)


def _old_seeded_requests(seeds, cfg, tpl, passages, s):
    """The previous code path, for the ratio: all requests, few-shot picks from a list built per request."""
    import collections

    from harness.generation import parse as fmt
    from harness.generation.pipeline import describe, request_seed

    by_sub = collections.defaultdict(list)
    for seed in seeds:
        by_sub[seed["subtask"]].append(seed)
    reqs = []
    for seed in seeds:
        kind = fmt.item_type(seed)
        for k in range(cfg["samples_per_seed"]):
            key = f"gen:{seed['seed_id']}#{k}"
            rng = random.Random(request_seed(s.seed, key))
            others = [x for x in by_sub[seed["subtask"]] if x["seed_id"] != seed["seed_id"]]
            shots = [seed] + rng.sample(others, min(len(others), max(0, cfg["fewshot"] - 1)))
            passage = rng.choice(passages) if passages and rng.random() < cfg["context_share"] else None
            n_opt = len(seed["choices"])
            prompt = tpl.render(f"similar_{kind}", task_description=describe(seed),
                                examples=[fmt.show(x, kind) for x in shots], n_options=n_opt,
                                letters=fmt.LETTERS[:n_opt], passage=passage["text"] if passage else None,
                                with_passage=False)
            reqs.append(s.request(key, prompt))
    return reqs


def _imports() -> None:
    import datasketch  # noqa: F401

    from harness.generation import cache, passages, pipeline, prompts  # noqa: F401
    from harness.stages import filter, generate  # noqa: F401


def child(args: argparse.Namespace) -> dict:
    from harness.generation import pipeline
    from harness.generation.prompts import Templates

    t0 = time.perf_counter()
    cfg = {"samples_per_seed": args.samples, "fewshot": PAPER["fewshot"], "context_share": PAPER["context_share"],
           "pairs_per_passage": 4}
    samp = pipeline.Sampling(0.8, 0.95, 512, 0)
    if args.what in ("shard", "unseeded_shard"):
        from harness.generation.cache import RequestCache
        from harness.generation.passages import PassageFile
        from harness.stages import read_jsonl

        passages = PassageFile(Path(args.passages))
        shard = (0, PAPER["shards"])
        if args.what == "shard":
            reqs, meta = pipeline.seeded_requests(read_jsonl(Path(args.seeds)), cfg, Templates(), passages, samp, shard)
        else:
            reqs, meta = pipeline.unseeded_requests(passages, {**cfg, "samples_per_seed": 1}, Templates(), samp, shard)
        t_build = time.perf_counter() - t0
        cache = RequestCache.for_stage(Path(args.tmp) / f"cache-{os.getpid()}", "set.shard0of32", "model")
        found = cache.get_many(reqs)
        cache.close()
        return {"requests": len(reqs), "build_s": t_build, "lookup_s": time.perf_counter() - t0 - t_build,
                "cached": len(found)}
    if args.what == "passages":
        from harness.generation import passages as P

        lines, stats = P.sample_corpus([args.corpus], "jsonl", "text", args.n, 0)
        out = Path(args.tmp) / f"passages-{os.getpid()}"
        out.mkdir()
        return {"passages": P.write(lines, out), "documents": stats.documents, "folder": str(out)}
    if args.what in ("seeded_new", "seeded_old"):
        from harness.stages import read_jsonl

        seeds = read_jsonl(Path(args.seeds))
        fn = pipeline.seeded_requests if args.what == "seeded_new" else _old_seeded_requests
        reqs = fn(seeds, {**cfg, "context_share": 0}, Templates(), None, samp)
        return {"requests": len(reqs)}
    if args.what == "filter":
        return _filter(args)
    if args.what == "baseline":  # the interpreter and the modules every measurement imports
        return {}
    raise SystemExit(f"unknown measurement {args.what}")


def _filter(args: argparse.Namespace) -> dict:
    """The real filter stage over the shards' files (dedup; decontamination off: its index is a fixed cost)."""
    import logging

    from harness.stages import StageContext, StageSpec
    from harness.stages.filter import FilterStage

    files = sorted(Path(args.items).glob("items.*.jsonl"), key=lambda p: int(p.name.split(".")[1]))
    inputs = {f"items.{k}": f.parent for k, f in enumerate(files)}
    manifests = {f"items.{k}": {"result": {"file": f.name, "kept": 0}} for k, f in enumerate(files)}
    work = Path(args.tmp) / f"filter-{os.getpid()}"
    work.mkdir()
    spec = StageSpec("filter/bench", "filter", {"dedup_threshold": 0.7, "decontaminate": False}, {},
                     {n: n for n in inputs})
    res = FilterStage().run(StageContext(spec, work, inputs, manifests, logging.getLogger("bench")))
    return {"input": res["input"], "kept": res["kept"], "deduplicated": res["deduplicated"],
            "key_bytes": res["dedup_key_bytes"]}


def _old_filter(args: argparse.Namespace) -> dict:
    """The previous filter: every item in memory, one datasketch MinHashLSH over them."""
    import hashlib

    from datasketch import MinHash, MinHashLSH

    from harness.filters.dedup import item_text
    from harness.filters.text import words

    items = [json.loads(line) for f in Path(args.items).glob("items.*.jsonl") for line in open(f)]
    items.sort(key=lambda it: it["request"])
    lsh, exact, kept = MinHashLSH(threshold=0.7, num_perm=64), {}, []
    for it in sorted(items, key=lambda x: x["item_id"]):
        ws = words(item_text(it))
        h = hashlib.sha1(" ".join(ws).encode()).hexdigest()
        if h in exact:
            continue
        m = MinHash(num_perm=64, seed=1)
        m.update_batch(list({" ".join(ws[i:i + 3]).encode() for i in range(max(1, len(ws) - 2))}))
        if lsh.query(m):
            continue
        exact[h] = it["item_id"]
        lsh.insert(it["item_id"], m)
        kept.append(it)
    return {"input": len(items), "kept": len(kept)}


# ------------------------------------------------------------------------------------------- parent


def measure(what: str, tmp: Path, **kw) -> dict:
    """Runs one measurement in a fresh interpreter; wall time and its peak RSS."""
    cmd = [sys.executable, __file__, "--child", what, "--tmp", str(tmp)]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    out = tmp / f"out-{what}-{time.time_ns()}.json"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd + ["--out", str(out)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"measurement {what} {kw} failed (status {status})")
    return {**json.loads(out.read_text()), "wall_s": wall, "peak_gib": usage.ru_maxrss * 1024 / GIB}


def fit(xs: list[float], ys: list[float], at: float) -> float:
    """Least-squares line through (xs, ys), evaluated at `at`."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs) or 1e-12
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my + b * (at - mx)


def _row(label: str, r: dict, extra: str = "") -> None:
    print(f"  {label:<26} {r['work_s']:8.1f} s {r['peak_gib']:7.2f} GiB  {extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smallest", action="store_true", help="tiny fractions (< 30 s): a smoke test")
    ap.add_argument("--full", action="store_true", help="also one seeded shard at full size")
    ap.add_argument("--child")
    ap.add_argument("--tmp")
    ap.add_argument("--out")
    for k in ("seeds", "passages", "corpus", "items"):
        ap.add_argument(f"--{k}")
    ap.add_argument("--n", type=int)
    ap.add_argument("--samples", type=int, default=PAPER["samples"])
    args = ap.parse_args()
    if args.child:
        args.what = args.child
        _imports()  # timed below: the work, not the interpreter's start and imports (seconds on a busy machine)
        t0 = time.perf_counter()
        res = _old_filter(args) if args.what == "old_filter" else child(args)
        Path(args.out).write_text(json.dumps({**res, "work_s": time.perf_counter() - t0}))
        return

    fracs = [1 / 256, 1 / 128] if args.smallest else [1 / 16, 1 / 8, 1 / 4]
    ffracs = [1 / 2048, 1 / 1024] if args.smallest else [1 / 128, 1 / 64, 1 / 32]
    if args.full:
        fracs.append(1.0)
    with tempfile.TemporaryDirectory(prefix="paper-scale-") as tmpdir:
        tmp = Path(tmpdir)
        print(f"paper scale: {PAPER['seeds']:,} seeds x {PAPER['samples']} samples over {PAPER['shards']} shards "
              f"({PAPER['seeds'] * PAPER['samples'] // PAPER['shards']:,} requests per shard); "
              f"{PAPER['items']:,} items to filter\n")

        baseline = measure("baseline", tmp)
        base = baseline["peak_gib"]
        print(f"(times: the work in a fresh subprocess, after its imports; peaks: its ru_maxrss, of which "
              f"{base:.2f} GiB is the interpreter and imports)\n")
        print("1. one seeded generation shard: read seeds and passages, build its requests, look them up")
        xs, ts, ms = [], [], []
        for f in fracs:
            n_seeds = int(PAPER["seeds"] * f)
            seeds, corpus = tmp / f"seeds-{f}.jsonl", tmp / f"corpus-{f}.jsonl"
            write_seeds(seeds, n_seeds, PAPER["subtasks"])
            n_pass = int(n_seeds * PAPER["samples"] * PAPER["context_share"])
            write_corpus(corpus, int(n_pass * 1.25))
            p = measure("passages", tmp, corpus=corpus, n=n_pass)
            Path(p["folder"]).rename(tmp / f"psg-{f}")
            r = measure("shard", tmp, seeds=seeds, passages=tmp / f"psg-{f}")
            xs.append(f)
            ts.append(r["work_s"])
            ms.append(r["peak_gib"])
            _row(f"fraction {f:.4g}", r, f"{r['requests']:,} requests (build {r['build_s']:.1f} s, cache lookup "
                                        f"{r['lookup_s']:.1f} s)")
            _row("  passage stage", p, f"{p['passages']:,} passages from {p['documents']:,} documents")
            (tmp / f"passages-{f}.json").write_text(json.dumps(p))
        t_full, m_full = fit(xs, ts, 1.0), fit(xs, ms, 1.0)
        print(f"  -> full size (linear fit): {t_full:.0f} s, {m_full:.2f} GiB per shard "
              f"(targets 120 s, 4 GiB: {'met' if t_full < 120 and m_full < 4 else 'NOT met'})")
        pw = [json.loads((tmp / f"passages-{f}.json").read_text()) for f in fracs]
        print(f"  -> passage stage at full size ({int(PAPER['seeds'] * PAPER['samples'] * 0.5):,} passages, once for "
              f"all shards): {fit(xs, [p['work_s'] for p in pw], 1.0):.0f} s, "
              f"{fit(xs, [p['peak_gib'] for p in pw], 1.0):.2f} GiB (a CPU node)")

        print("\n2. one unseeded shard (2M passages x 1 sample / 32): stream the passage file, keep its shard's")
        uxs, uts, ums = [], [], []
        for f in fracs[:2] if not args.full else fracs[:3]:
            n = int(PAPER["unseeded_passages"] * f)
            corpus = tmp / f"ucorpus-{f}.jsonl"
            write_corpus(corpus, int(n * 1.25))
            p = measure("passages", tmp, corpus=corpus, n=n)
            Path(p["folder"]).rename(tmp / f"upsg-{f}")
            r = measure("unseeded_shard", tmp, passages=tmp / f"upsg-{f}")
            uxs.append(f)
            uts.append(r["work_s"])
            ums.append(r["peak_gib"])
            _row(f"fraction {f:.4g}", r, f"{r['requests']:,} requests")
            _row("  passage stage", p, f"{p['passages']:,} passages")
        print(f"  -> full size: {fit(uxs, uts, 1.0):.0f} s, {fit(uxs, ums, 1.0):.2f} GiB per shard")

        print("\n3. few-shot picks, old against new: one subtask, 10 samples per seed, all requests (no sharding)")
        sizes = [250, 500] if args.smallest else [1000, 2000, 4000]
        old_s = new_s = 0.0
        for n in sizes:
            seeds = tmp / f"one-{n}.jsonl"
            write_seeds(seeds, n, 3)
            # one subtask: rewrite the subtask of every seed
            rows = [json.loads(line) for line in open(seeds)]
            seeds.write_text("".join(json.dumps({**r, "subtask": "one"}) + "\n" for r in rows))
            old = measure("seeded_old", tmp, seeds=seeds, samples=10)
            new = measure("seeded_new", tmp, seeds=seeds, samples=10)
            old_s, new_s = old["work_s"], new["work_s"]
            print(f"  {n:>5} seeds: old {old_s:6.1f} s, new {new_s:6.1f} s (x{old_s / max(new_s, 1e-3):.1f})")
        # the old pick costs c * n^2 * samples per subtask, and every shard built all subtasks' requests
        c = max(old_s - new_s, 0.0) / (sizes[-1] ** 2 * 10)
        quad = sum(k ** 2 for k in subtask_sizes(PAPER["seeds"], PAPER["subtasks"])) * PAPER["samples"] * c
        print(f"  -> the old few-shot picks alone at paper scale, in EVERY shard: {quad / 3600:.1f} h "
              f"(c = {c:.1e} s per list element; subtasks of {subtask_sizes(PAPER['seeds'], PAPER['subtasks'])[0]:,} "
              f"and {subtask_sizes(PAPER['seeds'], PAPER['subtasks'])[1]:,} seeds); the old shard also rendered all "
              f"32 shards' prompts (x32 the new build time)")

        print("\n4. the filter over all shards' items (dedup, 32 shard files merged; target 16 GiB at 8M items)")
        fxs, fts, fms, keys = [], [], [], []
        for f in ffracs:
            n = int(PAPER["items"] * f)
            folder = tmp / f"items-{f}"
            folder.mkdir()
            write_items(folder, n, PAPER["shards"])
            r = measure("filter", tmp, items=folder)
            fxs.append(n)
            fts.append(r["work_s"])
            fms.append(r["peak_gib"])
            _row(f"{n:,} items", r, f"kept {r['kept']:,}; dropped {r['deduplicated']}")
            keys.append(r["key_bytes"])
        old = measure("old_filter", tmp, items=tmp / f"items-{ffracs[0]}")
        _row(f"old filter, {fxs[0]:,} items", old)
        m8, t8 = fit(fxs, fms, PAPER["items"]), fit(fxs, fts, PAPER["items"])
        k8 = fit(fxs, keys, PAPER["items"]) / GIB
        print(f"  -> 8M items (linear fit): {m8:.2f} GiB peak, {t8 / 60:.0f} min; its dedup keys alone grow to "
              f"{k8:.2f} GiB (x2 while two runs merge): {base + 2 * k8:.1f} GiB at most (target 16 GiB: "
              f"{'met' if max(m8, base + 2 * k8) < 16 else 'NOT met'})")
        print(f"  -> the old path, proportionally: {base + (old['peak_gib'] - base) * PAPER['items'] / fxs[0]:.0f} GiB")
    if args.smallest:
        print("\n(--smallest: a smoke test; at these sizes the fits measure the interpreter, not the slope)")


if __name__ == "__main__":
    main()
