"""Local generation with transformers' continuous batching (`generate_batch`), no server: on a CPU as fast as
`transformers serve` and reproducible. Requests go in chunks of `batch_size`, in key order; the torch RNG is seeded
from the chunk's first request, so an uninterrupted run gives the same samples every time (after a resume, the
regenerated part is another - equally valid - sample, and the request cache keeps what was done)."""

from __future__ import annotations

import math

import torch

from harness.generation.backends import Completion, GenerationError, LocalBatched, register


@register
class TransformersBackend(LocalBatched):
    name = "transformers"

    def __init__(self, opts):
        super().__init__(opts)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(opts.model)
            self.model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32).eval()
        except OSError as e:
            raise GenerationError(f"cannot load generator model '{opts.model}': {e}") from None
        self.commit_every = opts.chunk_size  # whole batches are committed (the driver rounds up to a batch)

    def _config(self, r):
        from transformers import GenerationConfig

        return GenerationConfig(max_new_tokens=r.max_tokens, do_sample=r.temperature > 0,
                                temperature=r.temperature or None, top_p=r.top_p if r.temperature > 0 else None,
                                eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.pad_token_id)

    @staticmethod
    def _cache_for(ids: list[list[int]], max_tokens: int):
        """A KV cache the size of the chunk (every prompt and answer at once, a quarter to spare). Left to itself,
        continuous batching sizes it from free memory - on a CPU, 80-90% of the machine's RAM (14 GB of 24 here),
        which starves whatever else runs (a server, another stage) into the OOM killer."""
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        page = 256
        tokens = sum(len(x) for x in ids) + len(ids) * max_tokens
        return ContinuousBatchingConfig(page_size=page, num_blocks=math.ceil(1.25 * tokens / page) + len(ids))

    def generate(self, requests, on_done) -> None:
        for chunk in self.chunks(requests):
            ids = self.prompt_ids(chunk)
            torch.manual_seed(chunk[0].seed)
            # generate_batch runs its own no-grad generation loop on a thread: no inference_mode here (its
            # tensors could not be updated in place by that thread)
            out = self.model.generate_batch(ids, generation_config=self._config(chunk[0]), progress_bar=False,
                                            continuous_batching_config=self._cache_for(ids, chunk[0].max_tokens))
            by_id = {int(k.rsplit("_", 1)[1]): v for k, v in out.items()}  # req_<position>
            failed = [chunk[j].key for j in range(len(chunk))
                      if j not in by_id or getattr(by_id[j], "error", None)]
            if failed:
                raise GenerationError(f"local generation failed for {len(failed)} requests (first: {failed[0]}); "
                                      f"see the log above")
            for j, r in enumerate(chunk):
                toks = list(by_id[j].generated_tokens)
                finish = "length"
                if self.tok.eos_token_id in toks:
                    toks, finish = toks[: toks.index(self.tok.eos_token_id)], "stop"
                on_done(r, Completion(self.tok.decode(toks, skip_special_tokens=True), len(ids[j]), len(toks),
                                      finish))
