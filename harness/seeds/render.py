"""Rendering Q&A items (seeds, or later generated items) as pretraining text, in several layouts."""

from __future__ import annotations

import random

LETTERS = "ABCDEFGHIJ"


def _explained(item: dict) -> str:
    """An enriched item's explanation comes before its answer (reasoning first)."""
    return f"\nExplanation: {item['explanation']}" if item.get("explanation") else ""


def _qa(item: dict) -> str:
    q = item["question"]
    if item.get("context"):
        q = f"{item['context']}\n{q}"
    return f"Question: {q}{_explained(item)}\nAnswer: {item['answer_text']}"


def _mc(item: dict) -> str:
    if not item.get("choices"):
        return _qa(item)
    q = item["question"] if not item.get("context") else f"{item['context']}\n{item['question']}"
    opts = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
    return f"Question: {q}\n{opts}{_explained(item)}\nAnswer: {LETTERS[item['answer_index']]}. {item['answer_text']}"


LAYOUTS = {"qa": _qa, "mc": _mc}


def render(items: list[dict], layout: str, items_per_doc: int, seed: int) -> list[str]:
    """Shuffle the items (seeded) and join `items_per_doc` of them per document, separated by blank lines."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}' (known: {', '.join(LAYOUTS)})")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    fmt = LAYOUTS[layout]
    return ["\n\n".join(fmt(items[j]) for j in order[i:i + items_per_doc]) for i in range(0, len(order), items_per_doc)]
