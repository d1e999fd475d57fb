"""Generation benchmark: the harness's openai backend against the same OpenAI-compatible server driven directly
(a bare httpx.AsyncClient with a semaphore, no retries, no cache) with the same requests and concurrency, in the
same run, alternating, against one managed `transformers serve` (continuous batching) on 127.0.0.1.

    python bench/generate.py [--requests 48] [--concurrency 16] [--max-tokens 48] [--prompt-words 60] [--repeat 2]

Prints completion tokens/s of each and the ratio harness / direct (target >= 0.9). Every round uses fresh seeds,
so no answer comes from a cache (the harness's backend is measured without the request cache, as the stage
consults the cache before calling it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.generation import models  # noqa: E402
from harness.generation.backends import BackendOptions, Request, make  # noqa: E402
from harness.generation.server import ManagedServer, transformers_cache_args  # noqa: E402

TOPICS = ["photosynthesis", "the French revolution", "volcanoes", "tides", "the printing press", "bridges",
          "vaccines", "glaciers", "electric motors", "honey bees", "the Silk Road", "lighthouses"]


def requests(n: int, max_tokens: int, words: int, round_: int) -> list[Request]:
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        filler = " ".join(f"{topic} fact {j}." for j in range(max(0, words - 20) // 3))
        prompt = f"{filler} Write one multiple-choice question about {topic} with four options and the answer."
        out.append(Request(f"r{round_}.{i}", (("user", prompt),), max_tokens, 0.8, 0.95, 1000 * round_ + i))
    return out


async def direct(url: str, model: str, reqs: list[Request], concurrency: int) -> int:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one(r: Request) -> int:
            async with sem:
                resp = await client.post(url + "/chat/completions", json={
                    "model": model, "messages": r.as_chat(), "max_tokens": r.max_tokens,
                    "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed})
                return resp.json()["usage"]["completion_tokens"]

        return sum(await asyncio.gather(*(one(r) for r in reqs)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--prompt-words", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--server-args", default="", help="extra arguments of transformers serve")
    a = ap.parse_args()
    model = str(models.prepare(a.model)) if a.model in models.CATALOGUE else a.model
    with tempfile.TemporaryDirectory() as tmp, ManagedServer(
            "transformers", model, Path(tmp) / "server.log",  # its KV cache sized as the generate stage sizes it
            extra_args=transformers_cache_args(a.concurrency, a.max_tokens) + a.server_args.split()) as srv:
        backend = make("openai", BackendOptions(model=model, base_url=srv.base_url, concurrency=a.concurrency))
        asyncio.run(direct(srv.base_url, model, requests(4, 8, a.prompt_words, 0), 4))  # warm-up
        rates = {"direct": [], "harness": []}
        for rep in range(a.repeat):
            for who in ("direct", "harness") if rep % 2 == 0 else ("harness", "direct"):
                reqs = requests(a.requests, a.max_tokens, a.prompt_words, 10 * rep + (who == "harness") + 1)
                t0 = time.perf_counter()
                if who == "direct":
                    toks = asyncio.run(direct(srv.base_url, model, reqs, a.concurrency))
                else:
                    got = []
                    backend.generate(reqs, lambda r, c: got.append(c.completion_tokens))
                    toks = sum(got)
                dt = time.perf_counter() - t0
                rates[who].append(toks / dt)
                print(f"  {who:8s} round {rep}: {toks} tokens in {dt:.1f} s = {toks / dt:.1f} tokens/s", flush=True)
    d, h = max(rates["direct"]), max(rates["harness"])
    print(f"generation, {a.requests} requests x {a.max_tokens} tokens, concurrency {a.concurrency}: "
          f"direct {d:.1f} tokens/s, harness {h:.1f} tokens/s, ratio {h / d:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
