"""An lm-eval model over our megatron.core checkpoints, registered as `megatron_harness`.

It loads a train stage's final checkpoint into a megatron.core GPTModel (no export needed) and answers lm-eval's
three request types in batches. Tokenization follows lm-eval's `hf` backend (trailing spaces of the context move to
the continuation; the continuation's tokens are those of context+continuation past the context's), so that both
backends score the same tokens and agree per item (tested to 1e-4).

    model_args: train_dir=<train stage folder>[,checkpoint=<a checkpoint folder>]; batch size from lm-eval
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model


@register_model("megatron_harness")
class MegatronHarnessLM(LM):
    def __init__(self, train_dir: str, batch_size: int = 32, checkpoint: str | None = None, **kwargs):
        super().__init__()
        from harness.data.tokenizer import load
        from harness.training import export, model as mdl

        train_dir = Path(train_dir)
        self.spec = json.loads((train_dir / "train_spec.json").read_text())
        result = json.loads((train_dir / "result.json").read_text())
        ckpt = Path(checkpoint) if checkpoint else train_dir / result["final_checkpoint"]
        self.shape = mdl.ModelShape(**self.spec["model"])
        self.model = export.load_model(self.spec, ckpt)
        # forward returns the decoder's (final-normed) hidden states; the output layer is applied only at the
        # positions that are scored - for a small model most of the work is that [tokens, vocabulary] projection
        self.model.post_process = False
        self.tok = load(self.spec["tokenizer"]["path"])
        self.eod = self.spec["tokenizer"]["eod_id"]
        self.max_length = self.shape.seq_length
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 32  # lm-eval may pass "auto"

    # ------------------------------------------------------------------------------------------- helpers
    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        return ctx, whole[len(ctx):]

    @torch.no_grad()
    def _hidden(self, sequences: list[list[int]]) -> torch.Tensor:
        """Hidden states [batch, position, hidden] of the right-padded batch (padding after a sequence cannot
        affect it)."""
        n = max(len(s) for s in sequences)
        batch = torch.full((len(sequences), n), self.eod, dtype=torch.long)
        for i, s in enumerate(sequences):
            batch[i, :len(s)] = torch.tensor(s)
        pos = torch.arange(n).unsqueeze(0).expand(len(sequences), -1)
        return self.model(batch, pos, None).transpose(0, 1)

    @torch.no_grad()
    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the vocabulary at the given hidden states [n, hidden]."""
        weight = self.model.shared_embedding_or_output_weight() if self.shape.tied_embeddings else None
        logits, _ = self.model.output_layer(hidden.unsqueeze(1), weight=weight)
        return torch.log_softmax(logits.squeeze(1).float(), dim=-1)

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log-probabilities of the continuation, whether it is the greedy continuation) per pair."""
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        from harness import progress

        for start in range(0, len(order), self.batch_size):
            progress.report("requests", start, len(order))
            idx = order[start:start + self.batch_size]
            seqs, conts = [], []
            for i in idx:
                ctx, cont = pairs[i]
                if len(cont) > self.max_length:
                    raise ValueError(f"a continuation of {len(cont)} tokens exceeds the context of {self.max_length}")
                seqs.append((ctx + cont)[-(self.max_length + 1):][:-1])
                conts.append(cont)
            hidden = self._hidden(seqs)
            at = self._log_probs(torch.cat([hidden[row, len(seq) - len(cont):len(seq)]
                                            for row, (cont, seq) in enumerate(zip(conts, seqs))]))
            first = 0
            for i, cont in zip(idx, conts):
                lp, first = at[first:first + len(cont)], first + len(cont)
                target = torch.tensor(cont)
                out[i] = (float(lp.gather(1, target.unsqueeze(1)).sum()), bool((lp.argmax(dim=-1) == target).all()))
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------- lm-eval API
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = []
        for req in requests:
            context, continuation = req.args
            if context == "":
                pairs.append(([self.eod], self._encode(continuation)))
            else:
                pairs.append(self._encode_pair(context, continuation))
        return self._score(pairs)

    def loglikelihood_rolling(self, requests) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        results = []
        for req in requests:
            (text,) = req.args[:1]
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self._encode(text), prefix_token=self.eod, max_seq_len=self.max_length, context_len=1)]
            results.append(sum(ll for ll, _ in self._score([(list(c), list(t)) for c, t in windows])))
        return results

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        """Greedy continuations in batches (longest prompts first) with megatron's static KV cache: one forward
        over the left-padded prompts, then one token per step. Rotary embeddings depend only on the distance
        between positions, so left padding (masked out) leaves each sequence's attention as if it were alone."""
        items = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = max(1, min(int(gen_kwargs.get("max_gen_toks", 64)), self.max_length - 1))
            ids = (self._encode(context) or [self.eod])[-(self.max_length - max_new):]  # room for the answer
            items.append((i, ids, until, max_new))
        items.sort(key=lambda it: -len(it[1]))
        outs: list[str | None] = [None] * len(items)
        from harness import progress

        for start in range(0, len(items), self.batch_size):
            progress.report("requests", start, len(items))
            batch = items[start:start + self.batch_size]
            for (i, *_), text in zip(batch, self._greedy(batch)):
                outs[i] = text
        return outs  # type: ignore[return-value]

    def _greedy(self, batch: list[tuple[int, list[int], list[str], int]]) -> list[str]:
        from megatron.core.inference.contexts import StaticInferenceContext

        n, width = len(batch), max(len(ids) for _, ids, _, _ in batch)
        steps = max(m for *_, m in batch)
        tokens = torch.full((n, width), self.eod, dtype=torch.long)
        pad = torch.ones((n, width), dtype=torch.bool)
        for row, (_, ids, _, _) in enumerate(batch):
            tokens[row, width - len(ids):] = torch.tensor(ids)
            pad[row, width - len(ids):] = False
        pos = (torch.cumsum(~pad, dim=1) - 1).clamp(min=0)
        cache = StaticInferenceContext(n, width + steps)
        # megatron's masks are True where attention is not allowed: later positions and the padding
        causal = torch.triu(torch.ones(width, width, dtype=torch.bool), diagonal=1)
        hidden = self.model(tokens, pos, causal[None, None] | pad[:, None, None, :], inference_context=cache,
                            runtime_gather_output=True)
        cache.sequence_len_offset += width
        new: list[list[int]] = [[] for _ in batch]
        texts = [""] * n
        live = [True] * n
        keys_pad = pad
        for step in range(steps):
            nxt = self._log_probs(hidden[-1]).argmax(dim=-1)  # [n]: the next token after each sequence
            for row, (_, _, until, max_new) in enumerate(batch):
                if not live[row]:
                    continue
                tok = int(nxt[row])
                if tok == self.eod:
                    live[row] = False
                    continue
                new[row].append(tok)
                texts[row] = self.tok.decode(new[row])
                if len(new[row]) >= max_new or any(u in texts[row] for u in until):
                    live[row] = False
            if not any(live) or step == steps - 1:
                break
            keys_pad = torch.cat([keys_pad, torch.zeros((n, 1), dtype=torch.bool)], dim=1)
            pos = pos[:, -1:] + 1
            hidden = self.model(nxt[:, None], pos, keys_pad[:, None, None, :], inference_context=cache,
                            runtime_gather_output=True)
            cache.sequence_len_offset += 1
        out = []
        for (_, _, until, _), text in zip(batch, texts):
            for u in until:
                text = text.split(u)[0]
            out.append(text)
        return out

    @torch.no_grad()
    def _generate_one(self, context: str, until: list[str], max_new: int) -> str:
        """The reference: greedy, one request, the whole sequence recomputed per token (tests compare with it)."""
        ids = (self._encode(context) or [self.eod])[-(self.max_length - max_new):]
        new: list[int] = []
        text = ""
        for _ in range(max_new):
            seq = ids + new
            nxt = int(self._log_probs(self._hidden([seq])[0, len(seq) - 1:]).argmax())
            if nxt == self.eod:
                break
            new.append(nxt)
            text = self.tok.decode(new)
            if any(u in text for u in until):
                break
        for u in until:
            text = text.split(u)[0]
        return text
