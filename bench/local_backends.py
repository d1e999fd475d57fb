"""Local CPU generation: the ctranslate2 backend (the model converted to int8) against the transformers backend
(continuous batching, fp32) - the harness's CPU default and what a user would run - on the same prefilled
task-seeded requests, with both models loaded once, alternating rounds in the same run.

    python bench/local_backends.py [--per-task 4] [--max-tokens 96] [--batch 32] [--repeat 2]

The requests are the quickstart's task-seeded set at a smaller size (the offline suite's nine seedable tasks,
`--per-task` train seeds each, the seed as the one example, SmolLM2-135M-Instruct), each round with fresh sampling
seeds. Each side's outputs are parsed and screened as the generate stage does. Prints per side and round the
completion tokens/s, the items past the screen and items/min, then the best round's ratio ctranslate2 /
transformers for both.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generation_yield import quickstart_seeds  # noqa: E402
from harness.generation import models, pipeline  # noqa: E402
from harness.generation.backends import BackendOptions, make  # noqa: E402
from harness.generation.prompts import Templates  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-task", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    seeds = quickstart_seeds(a.per_task)
    cfg = {"samples_per_seed": 1, "fewshot": 1, "context_share": 0.0}
    model = str(models.prepare("smollm2-135m-instruct"))
    opts = BackendOptions(model=model, batch_size=a.batch, chunk_size=a.batch)
    t0 = time.perf_counter()
    backends = {"transformers": make("transformers", opts)}
    print(f"  transformers loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    backends["ctranslate2"] = make("ctranslate2", opts)  # converts once (cached), then loads
    print(f"  ctranslate2 converted (or found) and loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in backends}
    for rep in range(a.repeat):
        samp = pipeline.Sampling(0.8, 0.95, a.max_tokens, 100 + rep, prefill=True)
        reqs, meta = pipeline.seeded_requests(seeds, cfg, Templates(), None, samp)
        order = list(backends) if rep % 2 == 0 else list(reversed(backends))
        for name in order:
            got = {}
            t0 = time.perf_counter()
            backends[name].generate([dataclasses.replace(r) for r in reqs], lambda r, c: got.__setitem__(r.key, c))
            dt = time.perf_counter() - t0
            items, _ = pipeline.parse_round(got, meta)
            kept, _ = pipeline.screen(items, {s["seed_id"]: s for s in seeds})
            tokens = sum(c.completion_tokens for c in got.values())
            rates[name].append((tokens / dt, len(kept) / dt * 60))
            print(f"  {name:12s} round {rep}: {tokens} tokens in {dt:.0f} s = {tokens / dt:.1f} tokens/s; "
                  f"{len(items)}/{len(reqs)} parsed, {len(kept)} past the screen: {len(kept) / dt * 60:.2f} items/min",
                  flush=True)
    best = {name: (max(t for t, _ in r), max(i for _, i in r)) for name, r in rates.items()}
    (ht, hi), (ct, ci) = best["transformers"], best["ctranslate2"]
    print(f"local generation, {len(reqs)} prefilled task-seeded requests x {a.max_tokens} tokens, batch {a.batch}, "
          f"SmolLM2-135M on the CPU: transformers {ht:.1f} tokens/s ({hi:.2f} items/min), ctranslate2 int8 "
          f"{ct:.1f} tokens/s ({ci:.2f} items/min); ratio {ct / ht:.2f} tokens/s, "
          f"{ci / hi if hi else float('inf'):.2f} items/min")


if __name__ == "__main__":
    main()
