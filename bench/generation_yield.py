"""Generation yield benchmark: usable items per minute from the CPU generator with the answer's first label
prefilled ("Question:", continued by the model) against the same requests without it (the harness before; what a
user gets from a chat endpoint that cannot continue a message), in the same run, with one loaded model.

    python bench/generation_yield.py [--per-task 4] [--max-tokens 96] [--batch 32]

The requests are the quickstart's task-seeded set at a smaller size: the offline suite's nine seedable tasks,
`--per-task` train seeds each, one example shown (the seed), SmolLM2-135M-Instruct on the local transformers
backend. Each side is parsed and screened as the generate stage does. Prints per side the parse rate, the items
kept by the screen, the wall time and items/min, the malformed reasons, and the ratio prefilled / plain.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.generation import models, pipeline  # noqa: E402
from harness.generation.backends import BackendOptions, make  # noqa: E402
from harness.generation.prompts import Templates  # noqa: E402
from harness.seeds.collect import collect  # noqa: E402
from quickstart_suite import suite_dir  # noqa: E402


def quickstart_seeds(per_task: int) -> list[dict]:
    """The quickstart's task-seeded seeds at a smaller size: `per_task` train seeds of each seedable offline task."""
    return collect(str(suite_dir() / "tasks"), ["offline_seeded"], per_task, 0)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-task", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    seeds = quickstart_seeds(a.per_task)
    cfg = {"samples_per_seed": 1, "fewshot": 1, "context_share": 0.0}
    model = str(models.prepare("smollm2-135m-instruct"))
    backend = make("transformers", BackendOptions(model=model, batch_size=a.batch, chunk_size=a.batch))
    results = {}
    for side in ("plain", "prefilled"):
        samp = pipeline.Sampling(0.8, 0.95, a.max_tokens, 0, prefill=side == "prefilled")
        reqs, meta = pipeline.seeded_requests(seeds, cfg, Templates(), None, samp)
        got = {}
        t0 = time.perf_counter()
        backend.generate(reqs, lambda r, c: got.__setitem__(r.key, c))
        dt = time.perf_counter() - t0
        items, malformed = pipeline.parse_round(got, meta)
        kept, screened = pipeline.screen(items, {s["seed_id"]: s for s in seeds})
        tokens = sum(c.completion_tokens for c in got.values())
        results[side] = len(kept) / dt * 60
        print(f"  {side:9s}: {len(items)}/{len(reqs)} parsed ({len(items) / len(reqs):.0%}), {len(kept)} past the "
              f"screen, {tokens} tokens in {dt:.0f} s: {results[side]:.2f} items/min", flush=True)
        print(f"             malformed {dict(collections.Counter(malformed).most_common())}, screened {dict(screened)}")
    ratio = results["prefilled"] / results["plain"] if results["plain"] else float("inf")
    print(f"generation yield, {len(seeds)} task-seeded requests, SmolLM2-135M on the CPU: plain "
          f"{results['plain']:.2f} items/min, prefilled {results['prefilled']:.2f} items/min, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
