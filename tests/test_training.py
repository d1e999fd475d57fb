"""Training on megatron.core on a CPU: a real run through the stages, exact resume after SIGTERM, two gloo
processes, HF export with matching logits, and bad input refused before the model is built."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import base_recipe, write_recipe
from harness.plan import Plan

TRAIN = {"micro_batch_size": 4, "global_batch_size": 8, "lr": 3e-3, "min_lr": 3e-4, "eval_interval": 20,
         "eval_samples": 16, "save_interval": 1000, "log_interval": 10}


def tiny_recipe(tmp_path, store="runs", **train):
    r = base_recipe(tmp_path, store=str(tmp_path / store), train={**TRAIN, **train})
    r["arms"] = [{"name": "mixed", "mix": {"web": 0.7, "qa": 0.3}}]
    r["report"] = {"baseline": "mixed"}
    r["data"]["tokens"] = 20_000  # 312 samples of 64: 39 steps of 8
    return r


def metrics(plan, stage_id, partial=False):
    spec = plan.by_id(stage_id)
    d = plan.store.partial_dir(spec.kind, spec.digest) if partial else plan.dir(spec)
    return [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted run (and its export), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("trained")
    path = write_recipe(tmp / "r.yaml", tiny_recipe(tmp))
    res = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--only", "export"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, Plan.load(tmp / "runs" / "toy" / "plan.json")


def test_training_learns_and_records(trained):
    tmp, plan = trained
    m = metrics(plan, "train/mixed/seed1")
    assert [r["step"] for r in m] == list(range(1, 40))
    assert m[0]["loss"] > 6.0, "an untrained model is near ln(vocab)"
    assert m[-1]["loss"] < m[0]["loss"] - 1.0, "the loss falls"
    assert abs(m[-1]["tokens/web"] + m[-1]["tokens/qa"] - 39 * 8 * 64) == 0
    assert abs(m[-1]["tokens/qa"] / m[-1]["tokens"] - 0.3) < 0.05
    assert "valid/web" in m[19] and "valid/qa" in m[-1]
    result = json.loads((plan.dir(plan.by_id("train/mixed/seed1")) / "manifest.json").read_text())["result"]
    assert result["steps"] == 39 and result["final_checkpoint"].startswith("checkpoints/step_0000039")


def test_sigterm_then_resume_gives_identical_losses(tmp_path, trained):
    _, ref_plan = trained
    reference = metrics(ref_plan, "train/mixed/seed1")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    cmd = [sys.executable, "-m", "harness", "run", str(path)]
    subprocess.run(cmd + ["--only", "blend"], check=True, capture_output=True)
    plan = Plan.load(tmp_path / "runs" / "toy" / "plan.json")
    spec = plan.by_id("train/mixed/seed1")
    log = plan.store.partial_dir(spec.kind, spec.digest) / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run-stage", "--plan", str(plan.path), "--stage",
                             spec.id], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 12):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err[-2000:]
    assert not plan.is_cached(spec), "an interrupted stage is not published"
    stopped_at = len(metrics(plan, spec.id, partial=True))
    assert 12 <= stopped_at < 39
    res = subprocess.run(cmd + ["--only", "train"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr and f"at step {stopped_at}" in res.stderr
    resumed = metrics(plan, spec.id)
    assert [r["step"] for r in resumed] == list(range(1, 40))
    for a, b in zip(reference, resumed):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (a["step"], a["loss"], b["loss"])
        for k in a:
            if k.startswith("valid/"):
                assert abs(a[k] - b[k]) <= 1e-6


def test_export_logits_match_megatron(trained):
    _, plan = trained
    from transformers import AutoTokenizer, LlamaForCausalLM


    train_dir = plan.dir(plan.by_id("train/mixed/seed1"))
    spec = json.loads((train_dir / "train_spec.json").read_text())
    hf_dir = plan.dir(plan.by_id("export/mixed/seed1")) / "hf"
    code = f"""
import json, sys, torch
from pathlib import Path
def main():
    from harness.training import export, model as mdl
    from megatron.core import dist_checkpointing
    spec = json.loads(Path({str(train_dir / 'train_spec.json')!r}).read_text())
    shape = mdl.ModelShape(**spec["model"])
    sd = export.megatron_state_dict(spec, Path({str(train_dir)!r}) / {json.loads((train_dir / 'result.json').read_text())['final_checkpoint']!r})
    model, _ = mdl.build(shape, "fp32", on_cpu=True)
    model.load_state_dict(sd, strict=False)
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, spec["tokenizer"]["vocab_size"], (3, 64), generator=g)
    with torch.no_grad():
        logits = model(x, torch.arange(64).unsqueeze(0).expand(3, -1), None)
    torch.save({{"x": x, "logits": logits}}, sys.argv[1])
if __name__ == "__main__":
    main()
"""
    out = plan.store.root / "megatron_logits.pt"
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = torch.load(out)
    hf = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(ref["x"]).logits
    assert sum(p.numel() for p in hf.parameters()) == mdl_parameters(spec), "the preset size formula is exact"
    assert got.shape == ref["logits"].shape
    assert torch.allclose(got, ref["logits"], atol=1e-4, rtol=0), (got - ref["logits"]).abs().max()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert tok.eos_token == "<|endoftext|>" and len(tok) == spec["tokenizer"]["vocab_size"]


def mdl_parameters(spec):
    from harness.training import model as mdl

    return mdl.ModelShape(**spec["model"]).parameters()


def test_two_gloo_processes_match_one(tmp_path, trained):
    _, ref_plan = trained
    reference = metrics(ref_plan, "train/mixed/seed1")
    r = tiny_recipe(tmp_path)
    r["profile"] = {"name": "local", "nproc_per_node": 2}
    path = write_recipe(tmp_path / "r.yaml", r)
    res = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--only", "train"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    plan = Plan.load(tmp_path / "runs" / "toy" / "plan.json")
    two = metrics(plan, "train/mixed/seed1")
    assert json.loads((plan.dir(plan.by_id("train/mixed/seed1")) / "result.json").read_text())["world_size"] == 2
    # same samples per step; only the order of floating-point reductions differs
    np.testing.assert_allclose([m["loss"] for m in two], [m["loss"] for m in reference], rtol=2e-4)


def test_vocabulary_smaller_than_tokenizer_is_refused(tmp_path, cli):
    r = tiny_recipe(tmp_path)
    r["model"] = {"preset": "tiny", "vocab_size": 256}
    path = write_recipe(tmp_path / "r.yaml", r)
    code, out = cli("run", path, "--only", "train")
    assert code == 1
    assert "model.vocab_size 256 is smaller than the tokenizer's vocabulary" in " ".join(out.split())
    plan = Plan.load(tmp_path / "runs" / "toy" / "plan.json")
    spec = plan.by_id("train/mixed/seed1")
    partial = plan.store.partial_dir(spec.kind, spec.digest)
    assert not (partial / "train_spec.json").exists() and not (partial / "checkpoints").exists(), \
        "refused before any model was built"


def test_checkpoint_from_another_config_is_refused(tmp_path, trained):
    _, ref_plan = trained
    from harness.training import checkpoint as ckpt

    final = ckpt.latest(ref_plan.dir(ref_plan.by_id("train/mixed/seed1")) / "checkpoints")
    identity = json.loads((final / "identity.json").read_text())
    identity["model"]["hidden_size"] = 256
    with pytest.raises(ckpt.CheckpointMismatch, match=r"model: checkpoint .*hidden_size.*!= run"):
        ckpt.check_identity(final, identity)


@pytest.mark.parametrize("preset,nominal", [("tiny", 2.6e6), ("20m", 20e6), ("125m", 125e6), ("350m", 350e6),
                                            ("1b", 1e9)])
def test_model_presets_have_their_size(tmp_path, preset, nominal):

    from harness import recipe as rcp
    from harness.training import model as mdl

    r = base_recipe(tmp_path)
    r["model"] = preset
    loaded = rcp.load(write_recipe(tmp_path / "r.yaml", r), check_files=False)
    shape = mdl.shape_from(rcp.to_dict(loaded.model), 32768 if preset != "tiny" else 8192, 2048)
    assert 0.7 * nominal <= shape.parameters() <= 1.3 * nominal, shape.parameters()


def test_bad_training_inputs_are_refused_before_the_model(trained, tmp_path):
    """A missing data prefix, and a source that cannot fill one sequence, stop the stage before any model exists."""
    _, plan = trained
    from harness.stages.train import _check_inputs
    from harness.training import model as mdl

    blend = json.loads((plan.dir(plan.by_id("blend/mixed/seed1")) / "blend.json").read_text())
    shape = mdl.shape_from({"num_layers": 2, "hidden_size": 128, "num_attention_heads": 4}, 600, 64)
    assert _check_inputs(None, shape, blend, 8) == blend["samples"] // 8
    missing = json.loads(json.dumps(blend))
    missing["sources"][0]["prefix"] = str(tmp_path / "nowhere" / "tokens")
    with pytest.raises(FileNotFoundError, match=r"no indexed dataset at .*nowhere/tokens.bin/.idx"):
        _check_inputs(None, shape, missing, 8)
    long_seq = mdl.shape_from({"num_layers": 2, "hidden_size": 128, "num_attention_heads": 4}, 600, 10**6)
    with pytest.raises(ValueError, match="cannot fill one sequence of 1000000"):
        _check_inputs(None, long_seq, blend, 8)
    with pytest.raises(ValueError, match="less than one global batch"):
        _check_inputs(None, shape, blend, 10**9)
