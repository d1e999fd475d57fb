"""vLLM's offline engine on a GPU node (the `gpu` extra). Imported only when a recipe asks for it, so that nothing
here is needed to import, test or run on a CPU.

The engine returns a call's answers only when the whole call is done, so the backend declares `commit_every`
(generator.vllm.chunk_size): the driver hands it that many requests at a time and commits their answers before
the next chunk - a preemption loses one chunk, not the shard."""

from __future__ import annotations

from harness.generation.backends import Backend, Completion, GenerationError, register


@register
class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, opts):
        super().__init__(opts)
        self.commit_every = opts.chunk_size
        try:
            from vllm import LLM, SamplingParams  # noqa: F401
        except Exception as e:  # ImportError, or a CUDA-less import failure
            raise GenerationError(f"the vllm backend needs a GPU node whose job environment holds vLLM (pip install "
                                  f"-e '.[vllm]' in an environment of its own: vLLM pins its own torch; README: On "
                                  f"GPU nodes); "
                                  f"importing vllm failed: {type(e).__name__}: {str(e)[:200]}") from None
        self._sampling = SamplingParams
        # engine settings from generator.vllm (max_model_len, gpu_memory_utilization, tensor_parallel_size,
        # generation_config); an explicit SamplingParams per request carries the recipe's temperature and top_p
        self.llm = LLM(model=opts.model, seed=0, **opts.engine)

    def generate(self, requests, on_done) -> None:
        params = [self._sampling(max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p, seed=r.seed)
                  for r in requests]
        # one call per kind: requests that continue a prefilled answer, and the others
        outs = [None] * len(requests)
        for prefilled in (False, True):
            at = [i for i, r in enumerate(requests) if bool(r.prefill) == prefilled]
            if at:
                got = self.llm.chat([requests[i].as_chat() for i in at], [params[i] for i in at], use_tqdm=False,
                                    add_generation_prompt=not prefilled, continue_final_message=prefilled)
                for i, o in zip(at, got):
                    outs[i] = o
        for r, o in zip(requests, outs):
            c = o.outputs[0]
            on_done(r, Completion(c.text, len(o.prompt_token_ids), len(c.token_ids), c.finish_reason or "stop"))
