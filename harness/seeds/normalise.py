"""One lm-eval document, as its task renders it, normalised into the seed schema: the semantic question, its
context, the option texts and the answer as text - whatever prompt shape and output type the task uses.

lm-eval tasks disagree on where the content lives:
- options in the choices (ARC, PIQA) or lettered inside the prompt with letters as the choices (CommonsenseQA,
  MMLU, GPQA): the letters are mapped back to the option texts and the option lines leave the question;
- answer cues of every form ("Question: ... Answer:", "Q: ... A:", a bare question, a sentence to complete);
- a passage before the question (BoolQ, SciQ) becomes the context;
- partial scoring (WinoGrande): doc_to_text gives the index of the right context and the choices are the
  contexts; the options are what the contexts do not share, the question the shared start, a blank, the rest;
- generative and cloze tasks: the target is the answer (of a list of accepted answers, the first without a
  qualifier); a worked solution ending "#### 42" (GSM8K) is split into an explanation and its final answer."""

from __future__ import annotations

import os
import re

LABELS = "ABCDEFGHIJKLMNOP"
_LABEL = re.compile(r"^\(?([A-P])\)?$")
_OPTION_LINE = re.compile(r"^\s*\(?([A-P])[.):]\s+(.*\S)\s*$")
_ANSWER_CUE = re.compile(r"\s*(?:Answer|Answer \(letter\)|Ans|A|Solution|Response)\s*:\s*$", re.I)
_QUESTION_CUE = re.compile(r"^(?:Question|Q|Goal|Problem)\s*:\s*", re.I)
_INNER_QUESTION = re.compile(r"\n\s*(?:Question|Q)\s*:\s*", re.I)
_FINAL_ANSWER = re.compile(r"\n?\s*####\s*(.+?)\s*$", re.S)


class NormaliseError(ValueError):
    pass


def _letters(choices: list) -> list[str] | None:
    """The labels when every choice is a bare option letter in order (A, B, C... or (A), (B)...)."""
    found = [_LABEL.match(str(c).strip()) for c in choices]
    if not choices or not all(found):
        return None
    letters = [m.group(1) for m in found]
    return letters if "".join(letters) == LABELS[:len(letters)] else None


def _inline_options(prompt: str, letters: list[str]) -> tuple[str, list[str]]:
    """(the prompt without its option lines, the option texts) for options lettered inside the prompt."""
    lines = prompt.splitlines()
    starts = [i for i, line in enumerate(lines) if (m := _OPTION_LINE.match(line)) and m.group(1) == letters[0]]
    for start in reversed(starts):  # the last run of A., B., ... is the options (an earlier "A." may be prose)
        texts, i = [], start
        while i < len(lines) and len(texts) < len(letters):
            m = _OPTION_LINE.match(lines[i])
            if not m or m.group(1) != letters[len(texts)]:
                break
            texts.append(m.group(2).strip())
            i += 1
        if len(texts) == len(letters):
            return "\n".join(lines[:start] + lines[i:]), texts
    raise NormaliseError(f"the choices are the letters {''.join(letters)} but the prompt does not list options "
                         f"{letters[0]}..{letters[-1]} on lines of their own")


def _index(target, choices: list[str], letters: list[str] | None) -> int:
    if isinstance(target, list):  # several gold answers (rare for multiple choice): the first
        target = target[0]
    if isinstance(target, bool):
        raise NormaliseError(f"a boolean target {target!r} names no option")
    text = str(target).strip()
    label = _LABEL.match(text)
    if isinstance(target, int):
        index = target
    elif text in choices:
        index = choices.index(text)
    elif letters and label and label.group(1) in letters:
        index = letters.index(label.group(1))
    elif re.fullmatch(r"\s*\d+\s*", str(target)):
        index = int(target)
    else:
        raise NormaliseError(f"the target {target!r} is neither an option, its letter nor its index")
    if not 0 <= index < len(choices):
        raise NormaliseError(f"the target index {index} is outside the {len(choices)} options")
    return index


def _split(prompt: str) -> tuple[str | None, str]:
    """(context, question) of a rendered prompt without its options: the answer cue goes, a passage before an inner
    "Question:" / "Q:" is the context, a leading cue goes."""
    text = _ANSWER_CUE.sub("", prompt.strip()).strip()
    parts = _INNER_QUESTION.split(text)
    if len(parts) > 1:
        context, question = "\n".join(parts[:-1]).strip(), parts[-1].strip()
        context = _QUESTION_CUE.sub("", context).strip()
        return context or None, _one_mark(question)
    return None, _one_mark(_QUESTION_CUE.sub("", text).strip())


def _one_mark(question: str) -> str:
    """A template that appends "?" to a question that has one (TriviaQA, NQ) leaves '??' or '?"?'."""
    return re.sub(r"(\?[\"')\]]*)\?$", r"\1", question)


def _partial(gold_context: int, contexts: list[str], continuation) -> tuple[str, list[str], int]:
    """Partial scoring: the options are where the contexts differ, the question the shared start, a blank, and
    the continuation they share."""
    prefix = os.path.commonprefix([str(c) for c in contexts])
    if not prefix.endswith(" "):  # options sharing their first letters ("Sam", "Sara") start after the space
        prefix = prefix[:prefix.rfind(" ") + 1]
    options = [str(c)[len(prefix):].strip() for c in contexts]
    question = f"{prefix.rstrip()} _ {str(continuation).strip()}".strip()
    return question, options, gold_context


def normalise(prompt, choices: list | None, target, output_type: str) -> dict:
    """{context, question, choices, answer_index, answer_text[, explanation]} of one rendered lm-eval document."""
    if output_type == "multiple_choice":
        if not choices or len(choices) < 2:
            raise NormaliseError(f"a multiple-choice document with {len(choices or [])} choices")
        if isinstance(prompt, int):  # partial scoring: the prompt is the index of the right context
            question, options, index = _partial(prompt, choices, target)
            return {"context": None, "question": question, "choices": options, "answer_index": index,
                    "answer_text": options[index]}
        letters = _letters(choices)
        text = str(prompt)
        rendered = options = [str(c).strip() for c in choices]
        if letters:
            text, options = _inline_options(text, letters)
        index = _index(target, rendered, letters)
        context, question = _split(text)
        return {"context": context, "question": question, "choices": options, "answer_index": index,
                "answer_text": options[index]}
    # generate_until, loglikelihood (cloze), loglikelihood_rolling: the target is the answer
    if isinstance(target, (list, tuple)):
        if not target:
            raise NormaliseError("a target list with no answer")
        # accepted answers (TriviaQA's aliases): the first without a qualifier such as "(disambiguation)"
        plain = [t for t in target if "(" not in str(t)]
        target = plain[0] if plain else re.sub(r"\s*\(.*?\)", "", str(target[0]))
    answer, explanation = str(target).strip(), None
    final = _FINAL_ANSWER.search(answer)
    if final and final.start() > 0:
        explanation, answer = answer[:final.start()].strip(), final.group(1).strip()
    if not answer:
        raise NormaliseError("an empty target")
    context, question = _split(str(prompt))
    out = {"context": context, "question": question, "choices": None, "answer_index": None, "answer_text": answer}
    if explanation:
        out["explanation"] = explanation
    return out
