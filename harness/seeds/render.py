"""Rendering Q&A items (seeds, or later generated items) as pretraining text, in several layouts."""

from __future__ import annotations

import collections
import random
import re

LETTERS = "ABCDEFGHIJ"

# options that point at other options or at positions keep their order: "all of the above", "A and B", "both"
_POSITIONAL = re.compile(r"\b(?:all|none|both|neither|either) of (?:the )?(?:above|below|these|those|them|the "
                         r"options)\b|^(?:all|none|both|neither) (?:of )?(?:the )?above\b|\b[A-J] (?:and|or|&) "
                         r"[A-J]\b|\boptions? [A-J]\b|^(?:both|neither|all|none)\W*$|"
                         r"^(?:both|all|none|neither)\b.*\b(?:above|before)\b", re.I)


def shuffle_options(item: dict, seed: int) -> dict:
    """The item with its options in a seeded random order (its own: by its id), the answer index following; the
    order a generator or a dataset wrote carries its answer-position bias. Positional options keep the order."""
    choices = item.get("choices")
    if not choices or len(choices) < 2 or any(_POSITIONAL.search(str(c)) for c in choices):
        return item
    order = list(range(len(choices)))
    random.Random(f"{seed}:{item.get('item_id') or item.get('seed_id')}").shuffle(order)
    return {**item, "choices": [choices[i] for i in order], "answer_index": order.index(item["answer_index"])}


def answer_positions(items: list[dict]) -> dict:
    """{n_options: {letter: count}} of the answers' positions."""
    by_n: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for it in items:
        if it.get("choices") and it.get("answer_index") is not None:
            by_n[len(it["choices"])][LETTERS[it["answer_index"]]] += 1
    return {str(n): dict(sorted(c.items())) for n, c in sorted(by_n.items())}


def _explained(item: dict) -> str:
    """An enriched item's explanation comes before its answer (reasoning first)."""
    return f"\nExplanation: {item['explanation']}" if item.get("explanation") else ""


def _qa(item: dict) -> str:
    q, a = item["question"], item["answer_text"]
    if item.get("inline") and item.get("choices"):  # the unseeded control's options inside the question line
        q += " " + " ".join(f"({LETTERS[i].lower()}) {c}" for i, c in enumerate(item["choices"]))
        a = f"({LETTERS[item['answer_index']].lower()}) {a}"
    if item.get("context"):
        q = f"{item['context']}\n{q}"
    return f"Question: {q}{_explained(item)}\nAnswer: {a}"


def _mc(item: dict) -> str:
    if not item.get("choices"):
        return _qa(item)
    q = item["question"] if not item.get("context") else f"{item['context']}\n{item['question']}"
    opts = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
    return f"Question: {q}\n{opts}{_explained(item)}\nAnswer: {LETTERS[item['answer_index']]}. {item['answer_text']}"


LAYOUTS = {"qa": _qa, "mc": _mc}
# whether a layout shows an item's options (their positions are then part of the text, and reported)
SHOWS_OPTIONS = {"qa": lambda it: bool(it.get("inline")), "mc": lambda it: True}


def _blocks(items: list[dict], seed: int) -> list[tuple[str | None, list[dict]]]:
    """Items written from a corpus passage are rendered after it, once per passage; the unseeded control keeps a
    seeded random 1..k of a passage's k pairs (Nemotron-CC's diverse QA: the document, then some of its pairs)."""
    blocks: list[tuple[str | None, list[dict]]] = []
    by_passage: dict[str, list[dict]] = collections.defaultdict(list)
    for it in items:
        if it.get("passage_id") and it.get("context"):
            by_passage[it["passage_id"]].append(it)
        else:
            blocks.append((None, [it]))
    for pid, group in sorted(by_passage.items()):
        if all(it.get("seed_id") is None for it in group):
            rng = random.Random(f"{seed}:{pid}")
            keep = sorted(rng.sample(range(len(group)), rng.randint(1, len(group))))
            group = [group[i] for i in keep]
        blocks.append((group[0]["context"], [{**it, "context": None} for it in group]))
    return blocks


def render(items: list[dict], layout: str, items_per_doc: int, seed: int) -> tuple[list[str], dict]:
    """Shuffle each item's options and the items (seeded), and join `items_per_doc` of them per document, separated
    by blank lines (an item written from a passage comes after it, see _blocks); returns the documents and what
    was rendered: items, and the answers' positions."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}' (known: {', '.join(LAYOUTS)})")
    blocks = [(ctx, [shuffle_options(it, seed) for it in group]) for ctx, group in _blocks(items, seed)]
    order = list(range(len(blocks)))
    random.Random(seed).shuffle(order)
    fmt = LAYOUTS[layout]

    def text(ctx, group):
        return "\n\n".join(([ctx] if ctx else []) + [fmt(it) for it in group])

    docs = ["\n\n".join(text(*blocks[j]) for j in order[i:i + items_per_doc])
            for i in range(0, len(order), items_per_doc)]
    rendered = [it for _, group in blocks for it in group]
    return docs, {"items": len(rendered),
                  "answer_positions": answer_positions([it for it in rendered if SHOWS_OPTIONS[layout](it)])}
