"""Recipe -> DAG of stage instances (tokenizer, tokenize per source, blend per arm and seed, ...), each named by a
hash of (kind, stage version, harness version, resolved config, inputs' hashes).

Only what a stage's output depends on goes into its config: input files by content hash, not by path, so a
moved corpus is still a cache hit; worker counts and shard sizes are runtime settings, since the output is
byte-identical whatever they are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import harness
from harness import recipe as rcp
from harness import tracking
from harness.filters.config import index_config
from harness.seeds.config import selection as seed_selection
from harness.stages import StageSpec, get
from harness.store import Store, write_json_atomic
from harness.training.config import RUNTIME_KEYS


@dataclass
class Plan:
    experiment: str
    store: Store
    stages: list[StageSpec]  # in dependency order

    def by_id(self, stage_id: str) -> StageSpec:
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise KeyError(f"no stage '{stage_id}' in the plan of '{self.experiment}'")

    def dir(self, spec: StageSpec) -> Path:
        return self.store.stage_dir(spec.kind, spec.digest)

    def is_cached(self, spec: StageSpec) -> bool:
        return self.store.is_published(spec.kind, spec.digest)

    @property
    def path(self) -> Path:
        return self.store.experiment_dir(self.experiment) / "plan.json"

    def save(self, recipe: rcp.Recipe | None = None) -> Path:
        exp = self.store.experiment_dir(self.experiment)
        exp.mkdir(parents=True, exist_ok=True)
        if recipe is not None:
            (exp / "recipe.yaml").write_text(rcp.to_yaml(recipe))
        write_json_atomic(self.path, {"experiment": self.experiment, "store": str(self.store.root),
                                      "harness": harness.__version__, "stages": [s.to_dict() for s in self.stages]})
        return self.path

    @staticmethod
    def load(path: str | Path) -> "Plan":
        d = json.loads(Path(path).read_text())
        return Plan(d["experiment"], Store(d["store"]), [StageSpec(**s) for s in d["stages"]])


def digest(spec: StageSpec, dep_digests: dict[str, str]) -> str:
    payload = {"kind": spec.kind, "version": get(spec.kind).version, "harness": harness.__version__,
               "config": spec.config, "inputs": dep_digests}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build(recipe: rcp.Recipe, store: Store) -> Plan:
    if recipe.scales:  # every scale's plan; the stages they share (same id, same digest) once
        from harness.report.scales import scaled

        stages, seen = [], {}
        for sc in recipe.scales:
            for spec in build(scaled(recipe, sc), store).stages:
                if spec.id in seen:
                    assert seen[spec.id] == spec.digest, f"{spec.id} differs between scales"
                    continue
                seen[spec.id] = spec.digest
                stages.append(spec)
        return Plan(recipe.experiment, store, stages)
    stages: list[StageSpec] = []
    prof = recipe.profile

    def corpus_files(name: str) -> tuple[list[str], dict]:
        c = recipe.corpora[name]
        files = rcp.expand_paths(c.paths)
        return files, {"format": c.format, "text_field": c.text_field}

    # continuation arms: the base imported once; its tokenizer is the run's
    tok = recipe.tokenizer
    if recipe.base.from_ is not None:
        stages.append(_base_stage(recipe, store))
        stages.append(StageSpec("tokenizer", "tokenizer", {"kind": "base"}, {}, {"base": "base"}))
    elif tok.kind == "hf":
        from harness.data.tokenizer import tokenizer_file

        path = str(tokenizer_file(tok.path))
        stages.append(StageSpec("tokenizer", "tokenizer",
                                {"kind": "hf", "eod_token": tok.eod_token, "file": store.fingerprint([path])[0]},
                                {"path": path}))
    else:
        train_on = list(tok.train_on) or list(recipe.corpora)
        corpora, fps = [], []
        for name in train_on:
            files, opts = corpus_files(name)
            corpora.append({"paths": files, **opts})
            fps.append({"files": store.fingerprint(files), **opts})
        stages.append(StageSpec("tokenizer", "tokenizer",
                                {"kind": "bpe", "vocab_size": tok.vocab_size, "eod_token": tok.eod_token,
                                 "train_bytes": tok.train_bytes, "corpora": fps},
                                {"corpora": corpora}))

    # the evaluation suite's tasks, built from packaged benchmark data
    suite_file = rcp.REPO_RECIPES.parent / "evals" / f"{recipe.eval.suite}.yaml"
    stages.append(StageSpec("suite", "suite", {"suite": recipe.eval.suite, "definition": suite_file.read_text()},
                            {"wheels": str(rcp.REPO_RECIPES.parent / ".cache" / "wheels")}))

    # one tokenized dataset per source that some arm uses
    used = [s for s in list(recipe.corpora) + list(recipe.synthetic)
            if any(arm.mix.get(s, 0) > 0 for arm in recipe.arms)]
    run_opts = {"shard_bytes": recipe.data.shard_bytes, "workers": prof.workers, "threads": prof.threads}
    for name in used:
        if name in recipe.corpora:
            files, opts = corpus_files(name)
            stages.append(StageSpec(f"tokenize/{name}", "tokenize", {"files": store.fingerprint(files), **opts},
                                    {"files": files, **opts, **run_opts}, {"tokenizer": "tokenizer"}))
            continue
        syn = recipe.synthetic[name]
        if syn.kind in ("seed_render", "task_seeded"):
            sel = seed_selection(syn.tasks, syn.categories, syn.per_task_cap, syn.per_group_cap, syn.stratify,
                                 syn.seed)
            runtime = {}
            if syn.kind == "task_seeded" and syn.tokens_per_request is not None:  # checked once the seeds are known
                runtime["estimate"] = {"set": name, "samples_per_seed": syn.samples_per_seed,
                                       "tokens_per_request": syn.tokens_per_request,
                                       "shares": rcp.shares_of(recipe, name), "tokens": recipe.data.tokens,
                                       "max_epochs": recipe.data.max_epochs}
            stages.append(StageSpec(f"seeds/{name}", "seeds", sel, runtime, {"suite": "suite"}))
        items = f"seeds/{name}"
        if syn.kind in rcp.GENERATED_KINDS:
            stages += _generation_stages(recipe, store, name, stages)
            items = f"filter/{name}"
        stages.append(StageSpec(f"render/{name}", "render", {"layout": syn.layout, "items_per_doc": syn.items_per_doc,
                                                             "seed": syn.seed}, {}, {"items": items}))
        opts = {"format": "jsonl", "text_field": "text"}
        stages.append(StageSpec(f"tokenize/{name}", "tokenize", opts, {**opts, **run_opts},
                                {"tokenizer": "tokenizer", "source": f"render/{name}"}))

    # the base corpora checked against the eval index (report only)
    if recipe.decontamination.corpus_report:
        for name in used:
            if name in recipe.corpora:
                _ensure_index(recipe, stages)
                files, opts = corpus_files(name)
                stages.append(StageSpec(f"contamination/{name}", "contamination",
                                        {"files": store.fingerprint(files), **opts}, {"files": files, **opts},
                                        {"index": "decontam_index"}))

    # one blend per arm and training seed (seeds that share a data order share the output)
    d = recipe.data
    for arm in recipe.arms:
        mix = {s: float(v) for s, v in sorted(arm.mix.items()) if v > 0}
        for seed in recipe.seeds:
            data_seed = seed if d.vary_order_with_seed else d.seed
            stages.append(StageSpec(f"blend/{arm.name}/seed{seed}", "blend",
                                    {"mix": mix, "tokens": int(d.tokens), "seq_length": d.seq_length,
                                     "split": d.split, "max_epochs": float(d.max_epochs), "seed": int(data_seed)},
                                    {}, {"tokenizer": "tokenizer", **{s: f"tokenize/{s}" for s in mix}}))

    # one training run per arm and seed, then its export to a transformers folder
    continuation = recipe.base.from_ is not None
    # a continuation's model is its base (a dependency, by digest); a scratch model is its preset's shape
    if continuation:
        model_cfg = {"base": True}
        if recipe.base.optimizer == "load":  # a megatron base's Adam state: part of where training starts
            model_cfg["optimizer"] = "load"
    else:
        model_cfg = {k: v for k, v in rcp.to_dict(recipe.model).items() if k != "preset"}
    base_dep = {"base": "base"} if continuation else {}
    train = rcp.to_dict(recipe.train)
    runtime_train = {k: train.pop(k) for k in RUNTIME_KEYS}  # how it runs, not what it computes: not hashed
    if train["tensor_parallel"] == 1:  # absent means 1: runs planned before the setting existed stay cached
        del train["tensor_parallel"]
    for arm in recipe.arms:
        # validation losses on every base corpus and on the arm's own synthetic sources: an arm never waits for
        # another arm's synthetic data (on a cluster the baseline starts while the synthetic sets are generated)
        valid_deps = {f"valid:{s}": f"tokenize/{s}" for s in used if s in recipe.corpora or arm.mix.get(s, 0) > 0}
        for seed in recipe.seeds:
            tid = f"train/{arm.name}/seed{seed}"
            run_config = tracking.run_config(recipe, arm, seed)  # the training's and its evaluation's W&B config
            stages.append(StageSpec(tid, "train",
                                    {"model": model_cfg, "train": train, "seq_length": d.seq_length, "seed": int(seed)},
                                    {"nproc_per_node": prof.nproc_per_node, "peak_tflops": prof.peak_tflops,
                                     "train": runtime_train, "experiment": recipe.experiment,
                                     "run_name": f"{arm.name}-seed{seed}", "wandb": rcp.to_dict(recipe.wandb),
                                     "wandb_config": run_config},
                                    {"tokenizer": "tokenizer", "blend": f"blend/{arm.name}/seed{seed}", **valid_deps,
                                     **base_dep}))
            stages.append(StageSpec(f"export/{arm.name}/seed{seed}", "export", {}, {},
                                    {"train": tid, "tokenizer": "tokenizer"}))
            e = recipe.eval
            stages.append(StageSpec(f"eval/{arm.name}/seed{seed}", "eval",
                                    eval_config(e),
                                    {"batch_size": e.batch_size, "experiment": recipe.experiment, "arm": arm.name,
                                     "seed": int(seed), "run_name": f"{arm.name}-seed{seed}",
                                     "wandb": rcp.to_dict(recipe.wandb),
                                     "wandb_config": run_config},
                                    {"export": f"export/{arm.name}/seed{seed}", "train": tid, "suite": "suite"}))

    if continuation:  # the base itself, evaluated once: what every arm's continuation starts from
        e = recipe.eval
        stages.append(StageSpec("eval/base", "eval", eval_config(e),
                                {"batch_size": e.batch_size, "experiment": recipe.experiment, "arm": "base",
                                 "seed": 0, "run_name": "base", "wandb": rcp.to_dict(recipe.wandb)},
                                {"export": "base", "train": "base", "suite": "suite"}))

    digests: dict[str, str] = {}
    for spec in stages:
        spec.digest = digest(spec, {name: digests[dep] for name, dep in sorted(spec.deps.items())})
        digests[spec.id] = spec.digest
    return Plan(recipe.experiment, store, stages)


def eval_config(e) -> dict:
    """An eval stage's hashed configuration: the same for every arm, seed and the base (the switches that change
    requests only when set, so that earlier evaluations keep their hash)."""
    cfg = {"tasks": list(e.tasks), "limit": e.limit, "num_fewshot": e.num_fewshot, "backend": e.backend}
    if e.apply_chat_template:
        cfg["apply_chat_template"] = True
    if e.allow_code_execution:
        cfg["allow_code_execution"] = True
    return cfg


def _base_stage(recipe: rcp.Recipe, store: Store) -> StageSpec:
    """The base named by content (a local folder's files) or by hub name and revision."""
    b = recipe.base
    from harness.training.base import is_local, megatron_source

    mg = megatron_source(b.from_) if is_local(b.from_) else None
    if mg is not None and mg[1] is not None:  # one of our runs: its spec and the checkpoint's files
        files = [str(mg[0] / "train_spec.json")] + sorted(str(p) for p in mg[1].rglob("*") if p.is_file())
        source = {"megatron": dict(zip((str(Path(f).relative_to(mg[0])) for f in files), store.fingerprint(files)))}
    elif is_local(b.from_):
        files = sorted(str(p) for p in Path(b.from_).iterdir() if p.is_file())
        source = {"files": dict(zip((Path(f).name for f in files), store.fingerprint(files)))}
    else:
        source = {"hub": b.from_, "revision": b.revision}
    return StageSpec("base", "base", {"source": source, "eod_token": b.eod_token, "seq_length": recipe.data.seq_length,
                                      "check_positions": b.check_positions, "check_tolerance": b.check_tolerance},
                     {"from": b.from_, "revision": b.revision})


def _ensure_index(recipe: rcp.Recipe, stages: list[StageSpec]) -> None:
    if not any(s.id == "decontam_index" for s in stages):
        stages.append(StageSpec("decontam_index", "decontam_index", index_config(recipe.decontamination), {},
                                {"suite": "suite"}))


def model_identity(g: rcp.GeneratorConfig, store: Store) -> str:
    """What the request cache and the stage hash know the generator by: a catalogue entry by its pinned package,
    a local folder by the content of its files, a server-side model by its name."""
    from harness.generation import models

    if g.model in models.CATALOGUE:
        ident = f"catalogue:{g.model}:{models.CATALOGUE[g.model]['package']}:v{models.CONVERSION}"
    elif Path(g.model).is_dir():
        files = sorted(str(p) for p in Path(g.model).iterdir() if p.is_file() and p.suffix in
                       (".json", ".safetensors", ".bin", ".model", ".jinja"))
        ident = "folder:" + hashlib.sha256("".join(store.fingerprint(files)).encode()).hexdigest()[:16]
    else:
        ident = f"server:{g.model}"
    from harness.generation.config import LOCAL_BATCHED, uses_vllm

    served = g.server_kind if g.backend == "openai" and g.server == "managed" else g.backend
    batch = f"/batch{g.batch_size}" if g.backend in LOCAL_BATCHED else ""  # its samples depend on the batching

    # vLLM's generation_config decides the sampling settings a request leaves unset (top_k, repetition_penalty)
    gc = f"/generation-config:{g.vllm.generation_config}" if uses_vllm(g) else ""
    return f"{g.backend}/{served}/{ident}{batch}{gc}"


def _generator_config(g: rcp.GeneratorConfig) -> dict:
    """What of a generator (or verifier) decides its samples: hashed into the stage."""
    from harness.generation.config import LOCAL_BATCHED, prefills, uses_vllm

    gen = {"backend": g.backend, "model": g.model, "temperature": g.temperature, "top_p": g.top_p,
           "max_tokens": g.max_tokens}
    if uses_vllm(g):  # what decides the samples (the rest of the engine settings only decide the speed)
        gen["vllm"] = {"generation_config": g.vllm.generation_config, "max_model_len": g.vllm.max_model_len}
    if g.backend in LOCAL_BATCHED:
        gen["batch_size"] = g.batch_size  # batches share a sampling seed: the batch size changes the samples
    if prefills(g):  # (absent otherwise: sets generated before the setting keep their hash)
        gen["prefill"] = True
    return gen


def _generator_runtime(g: rcp.GeneratorConfig) -> dict:
    """How to reach or start a generator (or verifier): not hashed."""
    return {"server": g.server, "server_kind": g.server_kind, "concurrency": g.concurrency, "timeout": g.timeout,
            "max_retries": g.max_retries, "startup_timeout": g.startup_timeout, "offline": g.offline,
            "vllm": rcp.to_dict(g.vllm)}


def _generation_stages(recipe: rcp.Recipe, store: Store, name: str, stages: list[StageSpec]) -> list[StageSpec]:
    """passages/<name> (when grounded), generate/<name> (or its shards) and filter/<name>, plus the shared eval
    index."""
    from harness.generation.prompts import Templates

    syn, g = recipe.synthetic[name], recipe.generator
    _ensure_index(recipe, stages)
    used = ["unseeded_qa"] if syn.kind == "unseeded_qa" else \
        ["similar_mc", "similar_completion", "similar_yesno", "similar_open"]
    v = syn.verification
    used += (["enrich"] if syn.enrich else []) + (["verify"] if v.enabled else []) + \
        (["verify_open"] if v.enabled and v.open_answers else [])
    templates = Templates(g.templates).hashes(used)
    gen = _generator_config(g)
    config = {"kind": syn.kind, "seed": syn.seed, "samples_per_seed": syn.samples_per_seed, "fewshot": syn.fewshot,
              "context_share": syn.context_share, "pairs_per_passage": syn.pairs_per_passage, "enrich": syn.enrich,
              "verification": rcp.to_dict(v), "generator": gen, "model_id": model_identity(g, store),
              "templates": templates}
    runtime = {**_generator_runtime(g), "templates": g.templates,
               "cache_dir": str(store.root / "_cache" / "requests"),
               "legacy_cache": str(store.root / "_cache" / "requests.sqlite")}
    if recipe.verifier is not None and v.enabled:  # (absent otherwise: earlier sets keep their hash)
        config["verifier"] = {**_generator_config(recipe.verifier), "model_id": model_identity(recipe.verifier, store)}
        runtime["verifier"] = _generator_runtime(recipe.verifier)
    seeds = {"seeds": f"seeds/{name}"} if syn.kind == "task_seeded" else {}
    out: list[StageSpec] = []
    inputs = dict(seeds)
    if syn.context_corpus and (syn.kind == "unseeded_qa" or syn.context_share > 0):
        # sampled once for every shard; sized from the seed count unless the recipe gives the number
        c = recipe.corpora[syn.context_corpus]
        files = rcp.expand_paths(c.paths)
        opts = {"format": c.format, "text_field": c.text_field}
        pconf = {"kind": syn.kind, "count": syn.passages, "seed": syn.seed, "samples_per_seed": syn.samples_per_seed,
                 "context_share": syn.context_share, "corpus": {"files": store.fingerprint(files), **opts}}
        out.append(StageSpec(f"passages/{name}", "passages", pconf, {"corpus": {"files": files, **opts}},
                             seeds if syn.passages is None else {}))
        inputs["passages"] = out[-1].id
    if g.shards == 1:
        gens = [StageSpec(f"generate/{name}", "generate", config, {**runtime, "cache_name": name}, inputs)]
        items = {"items": gens[0].id}
    else:  # the same stage over a part of the requests each (split by seed or passage); filter merges them
        gens = [StageSpec(f"generate/{name}/shard{i}", "generate", {**config, "shard": i, "shards": g.shards},
                          {**runtime, "cache_name": f"{name}.shard{i}of{g.shards}"}, inputs)
                for i in range(g.shards)]
        items = {f"items.{i}": s.id for i, s in enumerate(gens)}
    return [*out, *gens, StageSpec(f"filter/{name}", "filter", {"dedup_threshold": syn.dedup_threshold,
                                                                "decontaminate": syn.decontaminate}, {},
                                   {**items, **seeds, "index": "decontam_index"})]


def select(plan: Plan, only: list[str] | None) -> list[StageSpec]:
    """The stages matching `only` (ids, id prefixes or kinds) plus whatever they need that is not cached."""
    if not only:
        return list(plan.stages)

    def matches(s: StageSpec, o: str) -> bool:
        return s.id == o or s.kind == o or s.id.startswith(o.rstrip("/") + "/")

    wanted = {s.id for s in plan.stages if any(matches(s, o) for o in only)}
    unknown = [o for o in only if not any(matches(s, o) for s in plan.stages)]
    if unknown:
        raise KeyError(f"--only {', '.join(unknown)}: no such stage (stages: {', '.join(s.id for s in plan.stages)})")
    ids = {s.id: s for s in plan.stages}
    stack = list(wanted)
    while stack:
        for dep in ids[stack.pop()].deps.values():
            if dep not in wanted and not plan.is_cached(ids[dep]):
                wanted.add(dep)
                stack.append(dep)
    return [s for s in plan.stages if s.id in wanted]
