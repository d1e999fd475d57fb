"""Q&A formats: how an item is shown to the generator (few-shot examples) and how its output is parsed back.

Parsing is strict: an output that does not match its format exactly is dropped, and the reason is counted."""

from __future__ import annotations

import re

from harness.filters.text import contains, words

LETTERS = "ABCDEFGH"
YES_NO = {"yes", "no", "true", "false"}


class Malformed(ValueError):
    """reason is one of a small set of names counted in the manifest."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def item_type(seed: dict) -> str:
    """mc | completion | yesno | open, from a seed's shape."""
    choices = seed.get("choices")
    if not choices:
        return "open"
    if {str(c).strip().lower() for c in choices} <= YES_NO:
        return "yesno"
    return "mc" if seed["question"].rstrip().endswith("?") else "completion"


def show(item: dict, kind: str, with_answer: bool = True, with_passage: bool | None = None) -> str:
    """An item in the format the generator is asked to write; its passage shown for yes/no items (their format) or
    when asked (a verifier or an explainer needs the passage a grounded item is about)."""
    lines = []
    if (kind == "yesno" if with_passage is None else with_passage) and item.get("context"):
        lines.append(f"Passage: {item['context']}")
    lines.append(f"Question: {item['question']}")
    if kind in ("mc", "completion"):
        lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"])]
        if with_answer:
            lines.append(f"Answer: {LETTERS[item['answer_index']]}")
    elif with_answer:
        lines.append(f"Answer: {item['answer_text']}")
    return "\n".join(lines)


_FIELD = re.compile(r"^(Passage|Question|Answer|[A-H])[.:)]\s*(.*)$")


def _fields(text: str) -> list[tuple[str, str]]:
    """Lines of `Label: value`; an unlabelled line continues the previous field."""
    out: list[list[str]] = []
    for raw in text.strip().splitlines():
        line = raw.strip().strip("*").strip()
        if not line:
            continue
        m = _FIELD.match(line)
        if m:
            out.append([m.group(1), m.group(2).strip()])
        elif out:
            out[-1][1] = f"{out[-1][1]} {line}".strip()
        else:
            raise Malformed("text_before_question")
    return [(k, v) for k, v in out]


def _first_block(text: str, kind: str) -> str:
    """A preamble ("Here is a new question:") is skipped; of several Question blocks the first one that has an
    answer is taken (a small model often writes one, then starts another)."""
    lines = text.strip().splitlines()
    label = "Passage:" if kind == "yesno" and any(l.strip().startswith("Passage:") for l in lines) else "Question:"
    starts = [i for i, l in enumerate(lines) if l.strip().strip("*").strip().startswith(label)]
    if not starts:
        raise Malformed("no_question")
    bounds = starts + [len(lines)]
    for a, b in zip(bounds, bounds[1:]):
        block = lines[a:b]
        if any(l.strip().strip("*").strip().startswith("Answer") for l in block):
            return "\n".join(block)
    return "\n".join(lines[starts[0]:])


def parse(text: str, kind: str, n_options: int | None = None, max_chars: int = 1500) -> dict:
    """One item of `kind` from a generator's output, or Malformed(reason)."""
    if not text.strip():
        raise Malformed("empty")
    if len(text) > max_chars:
        raise Malformed("too_long")
    text = _first_block(text, kind)
    fields = _fields(text)
    labels = [k for k, _ in fields]
    if labels.count("Question") != 1:
        raise Malformed("no_question" if "Question" not in labels else "several_questions")
    if labels.count("Answer") != 1:
        raise Malformed("no_answer" if "Answer" not in labels else "several_answers")
    d = dict(fields)
    q, a = d["Question"], d["Answer"].strip()
    if len(q) < 8:
        raise Malformed("question_too_short")
    if labels[-1] != "Answer":
        raise Malformed("text_after_answer")
    item = {"question": q, "context": d.get("Passage") or None, "choices": None, "answer_index": None}
    if kind in ("mc", "completion"):
        opts = [(k, v) for k, v in fields if len(k) == 1]
        letters = "".join(k for k, _ in opts)
        if len(opts) < 2 or letters != LETTERS[:len(opts)]:
            raise Malformed("bad_options")
        if n_options and len(opts) != n_options:
            raise Malformed("wrong_number_of_options")
        choices = [v for _, v in opts]
        if any(not c for c in choices) or len({c.lower() for c in choices}) < len(choices):
            raise Malformed("duplicate_or_empty_options")
        m = re.match(r"^([A-H])\b", a)
        if not m or m.group(1) not in letters:
            raise Malformed("answer_not_an_option")
        idx = letters.index(m.group(1))
        item.update(choices=choices, answer_index=idx, answer_text=choices[idx])
    elif kind == "yesno":
        m = re.match(r"^(yes|no|true|false)\b", a, re.I)
        if not m:
            raise Malformed("answer_not_yes_no")
        word = m.group(1).lower()
        ans = {"true": "yes", "false": "no"}.get(word, word)
        item.update(choices=["yes", "no"], answer_index=0 if ans == "yes" else 1, answer_text=ans)
    else:
        if not a or len(a) > 400:
            raise Malformed("bad_answer_length")
        item["answer_text"] = a
    if q.lower() in a.lower():
        raise Malformed("answer_repeats_question")
    return item


# the labels a small model writes for its pairs: "Q:", "Question 2:", "**Question:**", "1. Q:", "A:", "Answer 2:",
# and Nemotron-CC's own bulleted lines, "- Question: ... Answer: ..."
_BULLET = r"(?:[-\u2022]\s*|\*\s+)?"
_Q_LABEL = re.compile(rf"^\s*{_BULLET}(?:\*\*)?\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*\d*\s*[:.)]\s*(?:\*\*)?\s*", re.I)
_A_LABEL = re.compile(rf"^\s*{_BULLET}(?:\*\*)?\s*(?:A|Answer)\s*\d*\s*:\s*(?:\*\*)?\s*", re.I)
_INLINE_ANSWER = re.compile(r"\s+(?:\*\*)?Answer\s*:\s*(?:\*\*)?\s*", re.I)
_NUMBERED_QUESTION = re.compile(rf"^\s*{_BULLET}(?:\*\*)?\s*\d+[.)]\s+(.+\?)\s*(?:\*\*)?\s*$")


def _relabel(text: str) -> str:
    """Pairs written in any of the usual shapes, as "Question:" / "Answer:" lines (a numbered line ending in "?"
    is a question; a question line that holds its answer is split)."""
    out = []
    for line in text.splitlines():
        if _Q_LABEL.match(line):
            q, *a = _INLINE_ANSWER.split(_Q_LABEL.sub("", line, count=1), maxsplit=1)
            line = "\n".join(["Question: " + q] + ["Answer: " + x for x in a])
        elif _A_LABEL.match(line):
            line = "Answer: " + _A_LABEL.sub("", line, count=1)
        elif (m := _NUMBERED_QUESTION.match(line)):
            line = "Question: " + m.group(1)
        out.append(line)
    return "\n".join(out)


# options written inside the question line, "(a) ... (b) ..." or "A) ... B) ...", from the first letter on
_INLINE_OPTION = re.compile(r"(?:^|(?<=\s))\(?([a-hA-H])\)\s+")
_OPTION_LETTER = re.compile(r"^\(?([a-hA-H])(?:\)|[.:]|$)\s*")


def _inline_options(question: str) -> tuple[str, list[str]] | None:
    marks = list(_INLINE_OPTION.finditer(question))
    if len(marks) < 2 or marks[0].group(1).upper() != "A":
        return None
    marks = marks[:next((i for i, m in enumerate(marks) if m.group(1).upper() != LETTERS[i]), len(marks))]
    if len(marks) < 2:
        return None
    ends = [m.start() for m in marks[1:]] + [len(question)]
    options = [re.sub(r"(?:\s*(?:[,;]|\bor\b))*\s*$", "", question[m.end():e]).strip() for m, e in zip(marks, ends)]
    stem = question[:marks[0].start()].rstrip(" ,:;")
    if options[-1].endswith("?"):  # "Which ..., (a) x or (b) y?": the question's mark goes back to the question
        options[-1] = options[-1][:-1].rstrip()
        stem += "" if stem.endswith("?") else "?"
    return stem, options


def structure_pair(item: dict) -> dict:
    """A pair of the unseeded control as the seeded items are: a multiple-choice question with its options inline
    gets its choices and keyed option (the answer's letter or an option's words), a yes/no answer the options
    yes/no - so that verification asks for as many votes as for a seeded item with as many options, and rendering
    shuffles the options. Otherwise an open answer."""
    q, a = item["question"], item["answer_text"]
    inline = _inline_options(q)
    if inline:
        stem, choices = inline
        if len(stem) < 8:
            raise Malformed("question_too_short")
        if any(not c for c in choices) or len({c.lower() for c in choices}) < len(choices):
            raise Malformed("duplicate_or_empty_options")
        m = _OPTION_LETTER.match(a)
        if m and m.group(1).upper() in LETTERS[:len(choices)]:
            idx = LETTERS.index(m.group(1).upper())
        else:
            said = [i for i, c in enumerate(choices) if words(c) and contains(words(a), words(c))]
            if len(said) != 1:
                raise Malformed("answer_not_an_option")
            idx = said[0]
        return {**item, "question": stem, "choices": choices, "answer_index": idx, "answer_text": choices[idx],
                "type": "mc", "inline": True}
    first = a.split(" ")[0].strip(".,!").lower()
    if first in YES_NO:
        yes = {"true": "yes", "false": "no"}.get(first, first) == "yes"
        return {**item, "choices": ["yes", "no"], "answer_index": 0 if yes else 1, "type": "yesno"}
    return {**item, "type": "open"}


def parse_pairs(text: str, max_pairs: int) -> tuple[list[dict], list[str]]:
    """Several question/answer pairs (the unseeded control): the well-formed ones, typed (see structure_pair), and
    reasons for the rest. Labels are read tolerantly (see _relabel); a preamble before the first question costs no
    pair."""
    items, bad = [], []
    chunks = [c for c in re.split(r"\n\s*(?=Question:)", "\n" + _relabel(text.strip())) if "Question:" in c]
    for chunk in chunks[:max_pairs]:
        try:
            items.append(structure_pair(parse(chunk.strip(), "open")))
        except Malformed as e:
            bad.append(e.reason)
    bad += ["too_many_pairs"] * max(0, len(chunks) - max_pairs)
    if not chunks:
        bad.append("no_question")
    return items, bad


def parse_letter(text: str, n_options: int) -> int | None:
    """The option a verifier chose: the first standalone letter A.. in its reply (None if there is none)."""
    m = re.search(r"\b([A-H])\b", text.strip())
    if not m or LETTERS.index(m.group(1)) >= n_options:
        return None
    return LETTERS.index(m.group(1))
