"""Bad recipes: each gives exit status 2 and a message naming the file and the key, before any work starts."""

import copy

import pytest

from conftest import base_recipe, write_recipe


def _set(d: dict, path: str, value):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[int(k)] if isinstance(d, list) else d[k]
    if isinstance(d, list):
        d[int(keys[-1])] = value
    else:
        d[keys[-1]] = value


def _del(d: dict, path: str):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[k]
    del d[keys[-1]]


DELETE = object()

# (case id, key path, new value, expected fragments of the message)
CASES = [
    ("unknown top-level key", "experimnet", "x", ["unknown key 'experimnet'", "did you mean 'experiment'"]),
    ("unknown nested key", "data.tokns", 5, ["unknown key 'data.tokns'", "did you mean 'data.tokens'"]),
    ("unknown key in a corpus", "corpora.web.text_feild", "body", ["unknown key 'corpora.web.text_feild'",
                                                                   "did you mean 'corpora.web.text_field'"]),
    ("wrong type", "data.tokens", "lots", ["data.tokens", "wrong type"]),
    ("wrong type list", "seeds", "one", ["seeds"]),
    ("shares do not sum to 1", "arms.1.mix", {"web": 0.7, "qa": 0.2}, ["arms[1].mix", "sum to 0.9, not 1"]),
    ("negative share", "arms.1.mix", {"web": 1.2, "qa": -0.2}, ["arms[1].mix.qa", "share must be a number >= 0"]),
    ("nan share", "arms.1.mix", {"web": 0.7, "qa": float("nan")}, ["arms[1].mix.qa", "share must be a number"]),
    ("unknown source", "arms.1.mix", {"web": 0.7, "qaa": 0.3}, ["arms[1].mix.qaa", "unknown source 'qaa'",
                                                                "did you mean 'qa'"]),
    ("duplicate arm", "arms.1.name", "base", ["arms[1].name", "duplicate arm name 'base'"]),
    ("missing corpus file", "corpora.qa.paths", ["corpora/nope.jsonl"], ["corpora.qa.paths", "no file matches",
                                                                         "nope.jsonl"]),
    ("missing required key", "experiment", DELETE, ["key 'experiment' is required"]),
    ("negative budget", "data.tokens", -5, ["data.tokens", "positive"]),
    ("impossible blend", "data.tokens", 10**12, ["needs", "tokens of 'web'", "add at least", "bytes of data"]),
    ("unknown profile", "profile", "clusterz", ["profile", "no profile named 'clusterz'"]),
    ("min_lr above lr", "train", {"lr": 1e-3, "min_lr": 1.0}, ["train.min_lr", "1 is above train.lr 0.001",
                                                                "decays from lr to min_lr"]),
    ("unknown model preset", "model", "tinyy", ["model", "no model named 'tinyy'", "did you mean 'tiny'"]),
    ("bad tokenizer kind", "tokenizer.kind", "sentencepiece", ["tokenizer.kind", "unknown tokenizer kind"]),
    ("hf tokenizer without path", "tokenizer.kind", "hf", ["tokenizer.path", "required"]),
    ("bad split", "data.split", "98,2", ["data.split", "train,valid,test"]),
    ("duplicate seeds", "seeds", [1, 1], ["seeds", "duplicate seeds"]),
    ("no arms", "arms", [], ["arms", "at least one arm"]),
    ("bad experiment name", "experiment", "my exp/1", ["experiment", "not a valid name"]),
    ("unknown synthetic kind", "synthetic", {"seeded": {"kind": "magic"}}, ["synthetic.seeded.kind",
                                                                            "unknown synthetic kind 'magic'"]),
    ("zero max epochs", "data.max_epochs", 0, ["data.max_epochs", "positive"]),
    ("fuzzy threshold too low", "decontamination", {"fuzzy_threshold": 0.2},
     ["decontamination.fuzzy_threshold", "must be in [0.5, 1]"]),
    ("zero verification votes", "synthetic", {"g": {"kind": "task_seeded", "verification": {"votes": 0}}},
     ["synthetic.g.verification.votes", "must be 1..9", "enabled: false"]),
    ("old verify_votes key", "synthetic", {"g": {"kind": "task_seeded", "verify_votes": 3}},
     ["unknown key 'synthetic.g.verify_votes'"]),
    ("unknown verifier backend", "verifier", {"backend": "magic"}, ["verifier.backend", "unknown backend 'magic'"]),
    ("fuzzy keys too long", "decontamination", {"fuzzy_ngram": 13}, ["decontamination.fuzzy_ngram", "must be 2..5"]),
    ("control not like the seeded set", "synthetic", {"t": {"kind": "task_seeded", "enrich": True, "layout": "mc"},
                                                      "u": {"kind": "unseeded_qa", "context_corpus": "web"}},
     ["synthetic.u: the unseeded control must be rendered, enriched and verified as the task-seeded set 't' is",
      "layout: qa here, mc in 't'; enrich: false here, true in 't'"]),
    ("unseeded control without corpus", "synthetic", {"u": {"kind": "unseeded_qa"}},
     ["synthetic.u.context_corpus", "required", "corpus passages"]),
    ("unknown context corpus", "synthetic", {"t": {"kind": "task_seeded", "context_corpus": "wbe",
                                                   "context_share": 0.5}},
     ["synthetic.t.context_corpus", "unknown corpus 'wbe'", "did you mean 'web'"]),
    ("unknown stratification", "synthetic", {"t": {"kind": "seed_render", "per_group_cap": 100, "stratify": "even"}},
     ["synthetic.t.stratify", "unknown stratification 'even'", "proportional"]),
    ("zero group cap", "synthetic", {"t": {"kind": "seed_render", "per_group_cap": 0}},
     ["synthetic.t.per_group_cap", "at least 1"]),
    ("context share out of range", "synthetic", {"t": {"kind": "task_seeded", "context_share": 1.5}},
     ["synthetic.t.context_share", "must be in [0, 1]"]),
    ("unknown eval backend", "eval", {"backend": "vlm"}, ["eval.backend", "unknown backend 'vlm'", "did you mean 'vllm'"]),
    ("unknown eval task", "eval", {"tasks": ["offline_arc_esy"]}, ["eval.tasks", "suite 'offline' has no task or group "
                                                                   "'offline_arc_esy'", "did you mean 'offline_arc_easy'"]),
    ("unknown eval task of another suite", "eval", {"tasks": ["paper_mmlu"]}, ["eval.tasks", "'paper_mmlu'"]),
    ("unknown seed task", "synthetic", {"t": {"kind": "task_seeded", "tasks": ["offline_nosuch"]}},
     ["synthetic.t.tasks", "suite 'offline' has no task or group 'offline_nosuch'"]),
    ("seed task held out", "synthetic", {"t": {"kind": "seed_render", "tasks": ["offline_piqa", "offline_sciq"]}},
     ["synthetic.t.tasks", "'offline_sciq' holds sciq of the suite's held-out group", "no longer held out"]),
    ("seed group held out", "synthetic", {"t": {"kind": "seed_render", "categories": {"c": {"tasks": ["offline"]}}}},
     ["synthetic.t.categories", "'offline' holds mmlu, sciq of the suite's held-out group"]),
    ("seed task without train split", "synthetic", {"t": {"kind": "task_seeded", "tasks": ["offline_triviaqa"]}},
     ["synthetic.t.tasks", "'offline_triviaqa': triviaqa has no train split to seed from"]),
    ("negative few-shot", "eval", {"num_fewshot": -1}, ["eval.num_fewshot", "must be 0 or more"]),
    ("unknown generator backend", "generator", {"backend": "llamacpp"},
     ["generator.backend", "unknown backend 'llamacpp'"]),
    ("generator model not found", "generator", {"backend": "transformers", "model": "no/such/folder"},
     ["generator.model", "neither a model folder nor a catalogue name"]),
    ("prefill on transformers serve", "generator", {"backend": "openai", "server": "managed", "prefill": True},
     ["generator.prefill", "cannot continue a prefilled answer"]),
    ("tasks beside categories", "synthetic", {"t": {"kind": "seed_render", "tasks": ["offline_piqa"],
                                                    "categories": {"c": {"tasks": ["offline_boolq"], "seeds": 0}}}},
     ["synthetic.t.categories", "not both", "synthetic.t.categories.c.seeds", "at least 1"]),
    ("bad server url", "generator", {"backend": "openai", "server": "localhost:8000"}, ["generator.server", "neither 'managed' nor"]),
    ("unknown generator key", "generator", {"temprature": 0.5}, ["unknown key 'generator.temprature'",
                                                            "did you mean 'generator.temperature'"]),
    ("unknown slurm key", "profile", {"executor": "slurm", "slurm": {"acount": "x"}},
     ["unknown key 'profile.slurm.acount'", "did you mean 'profile.slurm.account'"]),
    ("resources for an unknown stage", "profile", {"executor": "slurm", "slurm": {"resources": {"trian": {"nodes": 2}}}},
     ["profile.slurm.resources.trian", "unknown stage kind 'trian'", "did you mean 'train'"]),
    ("bad slurm time", "profile", {"executor": "slurm", "slurm": {"resources": {"train": {"time": "1 day"}}}},
     ["profile.slurm.resources.train.time", "not a Slurm time"]),
    ("bad slurm memory", "profile", {"executor": "slurm", "slurm": {"resources": {"eval": {"mem": "lots"}}}},
     ["profile.slurm.resources.eval.mem", "not a Slurm memory size"]),
    ("multi-node evaluation", "profile", {"executor": "slurm", "slurm": {"resources": {"eval": {"nodes": 4}}}},
     ["profile.slurm.resources.eval.nodes", "only training runs across nodes"]),
]


@pytest.mark.parametrize("case,key,value,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe(tmp_path, cli, case, key, value, expected):
    r = copy.deepcopy(base_recipe(tmp_path))
    if value is DELETE:
        _del(r, key)
    else:
        _set(r, key, value)
    path = write_recipe(tmp_path / "bad.yaml", r)
    code, output = cli("validate", path)
    assert code == 2, output
    flat = " ".join(output.split())
    assert str(path) in flat, f"the message must name the file: {output}"
    for frag in expected:
        assert frag in flat, f"missing {frag!r} in: {output}"
    assert not (tmp_path / "runs").exists(), "nothing may start for a bad recipe"


def test_bad_override_is_named(tmp_path, cli):
    path = write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path))
    code, output = cli("validate", path, "data.seq_lenght=128")
    assert code == 2
    assert "override 'data.seq_lenght=128'" in output and "did you mean 'data.seq_length'" in output


def test_all_problems_reported_together(tmp_path, cli):
    r = base_recipe(tmp_path)
    r["arms"] = [{"name": "a", "mix": {"web": 0.5}}, {"name": "a", "mix": {"wbe": 1.0}}]
    code, output = cli("validate", write_recipe(tmp_path / "r.yaml", r))
    assert code == 2
    assert "sum to 0.5" in output and "duplicate arm name 'a'" in output and "unknown source 'wbe'" in output


def test_yaml_syntax_error(tmp_path, cli):
    path = tmp_path / "broken.yaml"
    path.write_text("experiment: x\narms: [\n")
    code, output = cli("validate", path)
    assert code == 2 and "cannot parse" in output and str(path) in " ".join(output.split())


def test_good_recipe_and_override(tmp_path, cli):
    path = write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path))
    code, output = cli("validate", path, "data.tokens=30000")
    assert code == 0, output
    assert "30,000 tokens" in output


def test_slurm_profile_is_refused_by_the_local_run(tmp_path, cli):
    r = base_recipe(tmp_path)
    r["profile"] = {"executor": "slurm"}
    code, output = cli("run", write_recipe(tmp_path / "r.yaml", r))
    assert code == 2 and "harness submit" in " ".join(output.split())
    assert not (tmp_path / "runs" / "toy").exists()


def test_local_profile_is_refused_by_submit(tmp_path, cli):
    code, output = cli("submit", write_recipe(tmp_path / "r.yaml", base_recipe(tmp_path)))
    assert code == 2 and "runs locally" in output and "profile=local-cluster" in " ".join(output.split())
    assert not (tmp_path / "runs" / "toy").exists()


def test_vllm_eval_backend_on_a_cpu_is_a_clear_error():
    from harness.stages.evaluate import EVAL_BACKENDS

    with pytest.raises(RuntimeError, match="eval.backend vllm needs a GPU"):
        EVAL_BACKENDS["vllm"](None, "hf", "cpu")


def test_validating_and_planning_load_no_torch(tmp_path):
    """`harness validate` and `harness plan` answer in about a second: the recipe's checks and the plan need neither
    torch nor megatron.core (torch alone is 2.5 s here, paid before by every CLI call and every Slurm job's
    bookkeeping)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom harness.cli import app\n"
            f"for args in (['validate', 'recipes/quickstart.yaml'], ['plan', 'recipes/quickstart.yaml', '--store', "
            f"{str(tmp_path)!r}]):\n"
            "    res = CliRunner().invoke(app, args)\n"
            "    assert res.exit_code == 0, res.output\n"
            "print(sorted(m for m in ('torch', 'megatron.core', 'transformers', 'lm_eval') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "[]", res.stdout
