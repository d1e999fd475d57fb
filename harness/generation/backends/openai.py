"""Any OpenAI-compatible server (`vllm serve`, `transformers serve`), through an async httpx client: bounded
concurrency, a timeout per request, retries with exponential backoff and full jitter on 429, 5xx and connection
errors, and a per-request seed."""

from __future__ import annotations

import asyncio
import random
from typing import Callable

import httpx

from harness.generation.backends import Backend, Completion, GenerationError, Request, register

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@register
class OpenAIBackend(Backend):
    name = "openai"
    backoff_base = 0.5
    backoff_cap = 20.0

    def __init__(self, opts):
        super().__init__(opts)
        if not opts.base_url:
            raise GenerationError("the openai backend needs a server URL (generator.server), e.g. "
                                  "http://127.0.0.1:8000/v1, or generator.server: managed")
        self.url = opts.base_url.rstrip("/") + "/chat/completions"
        self.retries = 0  # retried attempts, for the manifest

    def _payload(self, r: Request) -> dict:
        body = {"model": self.opts.model, "messages": r.as_chat(), "max_tokens": r.max_tokens,
                "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed}
        if r.prefill:  # vLLM's (and SGLang's) extra parameters: continue the assistant's message
            body.update(add_generation_prompt=False, continue_final_message=True)
        return body

    async def _one(self, client: httpx.AsyncClient, r: Request) -> Completion:
        last = ""
        for attempt in range(self.opts.max_retries + 1):
            if attempt:
                self.retries += 1
                await asyncio.sleep(random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** attempt)))
            try:
                resp = await client.post(self.url, json=self._payload(r))
            except (httpx.TransportError, httpx.TimeoutException) as e:  # refused, reset, timed out
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                continue
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                continue
            if resp.status_code >= 400:  # this request is refused for itself: record it, go on
                return Completion("", error=f"HTTP {resp.status_code}: {resp.text[:300]}")
            try:
                body = resp.json()
                choice = body["choices"][0]
                usage = body.get("usage") or {}
                return Completion(choice["message"]["content"] or "", usage.get("prompt_tokens", 0),
                                  usage.get("completion_tokens", 0), choice.get("finish_reason") or "stop")
            except (ValueError, KeyError, IndexError, TypeError) as e:
                last = f"malformed response ({type(e).__name__}): {resp.text[:200]}"
                continue
        raise GenerationError(f"server {self.opts.base_url} failed request {r.key} after {self.opts.max_retries} "
                              f"retries: {last}")

    async def _run(self, requests: list[Request], on_done: Callable[[Request, Completion], None]) -> None:
        sem = asyncio.Semaphore(self.opts.concurrency)
        limits = httpx.Limits(max_connections=self.opts.concurrency, max_keepalive_connections=self.opts.concurrency)
        async with httpx.AsyncClient(timeout=self.opts.timeout, limits=limits) as client:
            async def task(r: Request) -> None:
                async with sem:
                    c = await self._one(client, r)
                on_done(r, c)

            tasks = [asyncio.create_task(task(r)) for r in requests]
            try:
                await asyncio.gather(*tasks)
            finally:  # one fatal error stops the others: nothing more is sent to a dead server
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def generate(self, requests, on_done) -> None:
        if requests:
            asyncio.run(self._run(list(requests), on_done))
