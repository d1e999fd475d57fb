"""Recipes: typed configuration (omegaconf structured dataclasses), includes by name, overrides, validation.

A recipe is merged in layers - schema defaults, included presets, the recipe file, command-line overrides - and
each layer is checked as it is merged, so an error names the file (or override) and the key path that caused it.
Semantic checks (shares, files, names, data sufficiency) run after the merge and report every problem at once.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from harness.checks import bad_number, did_you_mean
from harness.data.blend import estimate_problem
from harness.data.readers import expand_paths
from harness.evaluation.config import EvalConfig  # noqa: F401  (the recipe's eval section)
from harness.evaluation.config import validate as validate_eval
from harness.filters.config import DecontaminationConfig  # noqa: F401  (the recipe's decontamination section)
from harness.filters.config import validate as validate_decontamination
from harness.generation.config import GeneratorConfig, VLLMConfig  # noqa: F401  (the recipe's generator section)
from harness.generation.config import validate as validate_generator
from harness.generation.passages import needed as passages_needed
from harness.report.scales import ScaleConfig
from harness.report.scales import scaled
from harness.report.scales import validate as validate_scales
from harness.report.sweep import SweepConfig
from harness.report.sweep import expand as expand_sweeps
from harness.seeds.config import CategoryConfig  # noqa: F401  (a synthetic set's categories)
from harness.seeds.sets import GENERATED_KINDS, SyntheticConfig  # noqa: F401  (the recipe's synthetic section)
from harness.seeds.sets import validate as validate_synthetic
from harness.training.base import BaseConfig, validate_base
from harness.training.config import (TrainConfig, WandbConfig, validate_parallel, validate_train,
                                     validate_train_for_model, validate_wandb)

REPO_RECIPES = Path(__file__).resolve().parent.parent / "recipes"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RecipeError(Exception):
    """A recipe that cannot run. `problems` lists every (where, message) found; the CLI exits with status 2."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{where}: {msg}" for where, msg in problems))


# --------------------------------------------------------------------------------------------- schema


@dataclass
class CorpusConfig:
    """A base corpus: files, globs or folders of JSONL, JSONL.gz, Parquet or plain text."""

    paths: list[str] = field(default_factory=list)
    format: str = "auto"  # auto | jsonl | parquet | text   (jsonl covers .jsonl.gz)
    text_field: str = "text"


@dataclass
class TokenizerConfig:
    # bpe: byte-level BPE trained on the corpus | hf: a tokenizer.json file or a folder holding one
    # None: bpe, or - with base.from - the base's own tokenizer (continuation arms)
    kind: Optional[str] = None
    path: Optional[str] = None
    vocab_size: int = 8192  # for kind=bpe
    train_on: list[str] = field(default_factory=list)  # corpora to train the BPE on; empty = all corpora
    train_bytes: int = 20_000_000  # text read to train the BPE (the first documents in file order)
    eod_token: str = "<|endoftext|>"


@dataclass
class ArmConfig:
    name: str = "???"
    mix: dict[str, float] = field(default_factory=dict)  # source name -> share of the token budget


@dataclass
class DataConfig:
    tokens: int = "???"  # type: ignore[assignment]  # token budget every arm trains on
    seq_length: int = 256
    max_epochs: float = 4.0  # refuse a blend that repeats any source more often than this
    split: str = "98,2,0"  # train,valid,test split of every source, by documents (megatron's convention)
    seed: int = 1234  # data order; with vary_order_with_seed, each training seed gets its own order
    vary_order_with_seed: bool = True
    shard_bytes: int = 64 * 2**20  # tokenization shard size (a unit of parallelism and of resumption)


@dataclass
class ModelConfig:
    """A Llama-style GPT (RoPE, SwiGLU, RMSNorm) trained from scratch; presets in recipes/models/. The vocabulary
    comes from the tokenizer (padded to a multiple of 128) unless vocab_size is given. Continuation arms take the
    model from base.from instead."""

    preset: str = ""  # required unless base.from is given
    num_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # grouped-query attention; None = one group per head
    ffn_hidden_size: Optional[int] = None  # None = 8/3 x hidden, rounded up to a multiple of 64
    vocab_size: Optional[int] = None
    rotary_base: float = 10000.0
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02


@dataclass
class ReportConfig:
    baseline: str = "baseline"  # the arm every other arm is compared with
    controls: list[str] = field(default_factory=list)  # further reference arms (e.g. the unseeded Q&A control)
    bootstrap: int = 2000  # bootstrap replicates for the intervals


@dataclass
class SlurmResources:
    """What one stage's job asks for. Unset keys come from `default`, then from the built-in defaults."""

    partition: Optional[str] = None
    qos: Optional[str] = None
    nodes: Optional[int] = None  # > 1 only for train (srun, one rank per GPU or per nproc_per_node)
    gpus_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None  # per node, e.g. 64G
    time: Optional[str] = None  # [D-]HH:MM:SS or minutes


@dataclass
class SlurmConfig:
    conf: Optional[str] = None  # a slurm.conf for the harness's Slurm commands (the local cluster's); None: the system's
    account: Optional[str] = None
    python: Optional[str] = None  # the interpreter on the nodes (default: the one running `harness submit`)
    setup: list[str] = field(default_factory=list)  # shell lines run before each stage (module load, venv, container)
    sbatch: list[str] = field(default_factory=list)  # extra sbatch options for every job, e.g. "--exclude=bad01"
    max_requeues: int = 5  # a training job that saved on the time-limit signal requeues itself at most this often
    signal_seconds: int = 180  # the time-limit warning to training jobs (USR1), seconds before the limit
    resources: dict[str, SlurmResources] = field(default_factory=dict)  # `default` and stage kinds


@dataclass
class ProfileConfig:
    name: str = "local"
    executor: str = "local"  # local | slurm
    workers: int = 1  # processes for sharded stages (tokenization); each uses threads = cpus // workers
    threads: int = 0  # 0: all cores of the machine
    nproc_per_node: int = 1  # training processes per node (torchrun on one node, srun on a cluster)
    peak_tflops: float = 989.0  # per accelerator, for model FLOPs utilisation (H100 bf16 dense)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass
class Recipe:
    experiment: str = "???"
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    store: str = "runs"
    corpora: dict[str, CorpusConfig] = field(default_factory=dict)
    synthetic: dict[str, SyntheticConfig] = field(default_factory=dict)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    # a model (or endpoint) of its own for the verification votes; null: the generator votes on its own items
    verifier: Optional[GeneratorConfig] = None
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    arms: list[ArmConfig] = field(default_factory=list)
    # a source's share swept into arms (harness/report/sweep.py): the report fits the share's curve
    sweep: list[SweepConfig] = field(default_factory=list)
    # every arm at several model sizes and budgets (harness/report/scales.py): does the ranking hold at scale
    scales: list[ScaleConfig] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    base: BaseConfig = field(default_factory=BaseConfig)  # continuation arms: every arm starts from this model
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: list[int] = field(default_factory=lambda: [1])
    wandb: WandbConfig = field(default_factory=WandbConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # where the recipe came from; set by load(), not by users
    source: str = ""


# Sections that may be given as a name; the name is looked up as recipes/<folder>/<name>.yaml.
INCLUDES = {"profile": "profiles", "model": "models"}


# --------------------------------------------------------------------------------------------- loading


def _fields_at(path: str) -> list[str]:
    """Field names valid at a dotted key path of the schema; dict entries and list items step into their type."""
    t: Any = Recipe
    parts = [x for x in re.split(r"[.\[\]]", path) if x]
    i = 0
    while i < len(parts):
        hints = typing.get_type_hints(t) if is_dataclass(t) else {}
        if parts[i] not in hints:
            return []
        t, i = hints[parts[i]], i + 1
        while typing.get_origin(t) in (list, dict, typing.Union):
            if typing.get_origin(t) is typing.Union:
                t = next(a for a in typing.get_args(t) if a is not type(None))
            else:
                t, i = typing.get_args(t)[-1], i + 1  # the next part names the entry or the index
    return [f.name for f in fields(t) if f.name != "source"] if is_dataclass(t) else []


def _describe_omegaconf_error(e: OmegaConfBaseException, section: str = "") -> str:
    key = getattr(e, "full_key", None) or ""
    if section and key and not key.startswith(section):
        key = f"{section}.{key}"
    if isinstance(e, ConfigKeyError) or "not in" in str(e):
        bad = key or str(e)
        parent, _, leaf = bad.rpartition(".")
        candidates = _fields_at(parent)
        near = difflib.get_close_matches(leaf, candidates, n=1)
        hint = f" (did you mean '{'.'.join(filter(None, [parent, near[0]]))}'?)" if near else ""
        return f"unknown key '{bad}'{hint}"
    msg = str(e).splitlines()[0]
    if isinstance(e, ValidationError):
        return f"key '{key}': wrong type: {msg}"
    return f"key '{key}': {msg}" if key else msg


def _find_include(folder: str, name: str, near: Path) -> Path:
    for base in (near / folder, near.parent / folder, REPO_RECIPES / folder):
        p = base / f"{name}.yaml"
        if p.is_file():
            return p
    known = sorted({p.stem for base in (near / folder, REPO_RECIPES / folder) if base.is_dir()
                    for p in base.glob("*.yaml")})
    near_names = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{near_names[0]}'?)" if near_names else ""
    raise FileNotFoundError(f"no {folder[:-1]} named '{name}'{hint}; known: {', '.join(known) or 'none'}")


def _merge(base: DictConfig, layer: Any, where: str, problems: list) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        problems.append((where, _describe_omegaconf_error(e)))
        return base


def load(path: str | os.PathLike, overrides: list[str] | None = None, check_files: bool = True) -> Recipe:
    """Load, merge and validate a recipe. Raises RecipeError naming the file and key of every problem."""
    path = Path(path)
    problems: list[tuple[str, str]] = []
    if not path.is_file():
        raise RecipeError([(str(path), "recipe file not found")])
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors and duplicate keys
        raise RecipeError([(str(path), f"cannot parse: {str(e).splitlines()[0]}")]) from None
    if not isinstance(raw, DictConfig):
        raise RecipeError([(str(path), "a recipe is a mapping of keys to values")])
    if isinstance(raw.get("base"), DictConfig) and "from" in raw.base:  # `from` is a Python keyword: from_ inside
        raw.base["from_"] = raw.base.pop("from")
    overrides = [re.sub(r"^(\s*base\.)from(\s*=)", r"\1from_\2", ov) for ov in overrides or []]
    override_cfg = OmegaConf.create()
    for ov in overrides or []:
        if "=" not in ov:
            problems.append((f"override '{ov}'", "expected key=value"))
            continue
        try:
            override_cfg = OmegaConf.merge(override_cfg, OmegaConf.from_dotlist([ov]))
        except Exception as e:
            problems.append((f"override '{ov}'", str(e).splitlines()[0]))

    cfg = OmegaConf.structured(Recipe)
    # Includes by name: the recipe's (or an override's) string value names a preset file whose content is merged
    # first; keys given beside a `preset:`/`name:` entry override the preset.
    for section, folder in INCLUDES.items():
        for layer, where in ((override_cfg, "command line"), (raw, str(path))):
            val = layer.get(section) if section in layer else None
            name = val if isinstance(val, str) else (val.get("preset") or val.get("name")) if isinstance(val, DictConfig) else None
            if name is None:
                continue
            try:
                inc = _find_include(folder, str(name), path.parent)
            except FileNotFoundError as e:
                problems.append((where, f"{section}: {e}"))
                del layer[section]  # reported once; do not merge the bare name as a section
                break
            inc_cfg = OmegaConf.load(inc)
            key = "preset" if section == "model" else "name"
            inc_cfg[key] = str(name)
            cfg = _merge(cfg, OmegaConf.create({section: inc_cfg}), str(inc), problems)
            if isinstance(val, str):
                layer[section] = {key: val}  # the include is resolved; keep the name only
            if layer is override_cfg and section in raw:  # the command line chose another preset than the file
                if isinstance(raw[section], DictConfig):
                    raw[section].pop("preset" if section == "model" else "name", None)
                else:
                    del raw[section]
            break
    # key by key within structured sections, so that one bad key does not hide the others
    for key in list(raw.keys()):
        val = raw[key]
        if isinstance(val, DictConfig) and is_dataclass(OmegaConf.get_type(cfg, key)):
            for sub in list(val.keys()):
                cfg = _merge(cfg, OmegaConf.create({key: {sub: val[sub]}}), str(path), problems)
        else:
            cfg = _merge(cfg, OmegaConf.create({key: val}), str(path), problems)
    for ov in overrides or []:
        if "=" in ov and ov.split("=", 1)[0].strip() not in INCLUDES:  # includes by name are merged above
            try:
                cfg = _merge(cfg, OmegaConf.from_dotlist([ov]), f"override '{ov}'", problems)
            except Exception as e:
                problems.append((f"override '{ov}'", str(e).splitlines()[0]))
    if problems:
        raise RecipeError(problems)
    missing = sorted(OmegaConf.missing_keys(cfg))
    for k in missing:
        problems.append((str(path), f"key '{k}' is required"))
    if problems:
        raise RecipeError(problems)
    try:
        recipe: Recipe = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise RecipeError([(str(path), _describe_omegaconf_error(e))]) from None
    recipe.source = str(path.resolve())
    _resolve_paths(recipe, path.parent)
    expand_sweeps(recipe, lambda key, msg: problems.append((str(path), f"{key}: {msg}")))
    if problems:
        raise RecipeError(problems)
    validate(recipe, str(path), check_files=check_files)
    return recipe


def _resolve_paths(recipe: Recipe, base: Path) -> None:
    """Relative input paths are relative to the recipe file's folder, so a recipe runs from any directory."""
    for corpus in recipe.corpora.values():
        corpus.paths = [p if os.path.isabs(p) else str((base / p).resolve()) for p in corpus.paths]
    g = recipe.generator
    if g.templates and not os.path.isabs(g.templates):
        g.templates = str((base / g.templates).resolve())
    # a relative model folder is relative to the recipe; a hub name (`org/name`) is not a path
    if g.model.startswith(("./", "../", "~")) or (not os.path.isabs(g.model) and (base / g.model).exists()):
        g.model = os.path.abspath(base / os.path.expanduser(g.model))
    tok = recipe.tokenizer
    if tok.path and not os.path.isabs(tok.path):
        tok.path = str((base / tok.path).resolve())
    b = recipe.base.from_
    from harness.generation import models

    if b in models.CATALOGUE:  # a catalogue model: its prepared folder
        recipe.base.from_ = models.resolve(b)
    elif b and (b.startswith(("./", "../", "~")) or (not os.path.isabs(b) and (base / b).exists())):
        recipe.base.from_ = os.path.abspath(base / os.path.expanduser(b))


# --------------------------------------------------------------------------------------------- validation



def validate(recipe: Recipe, where: str, check_files: bool = True) -> None:
    """Semantic checks; every problem is collected and raised together."""
    p: list[tuple[str, str]] = []

    def bad(key: str, msg: str) -> None:
        p.append((where, f"{key}: {msg}"))

    if not NAME_RE.match(recipe.experiment) or recipe.experiment.startswith("_"):
        bad("experiment", f"'{recipe.experiment}' is not a valid name (letters, digits, '_', '.', '-')")
    if recipe.profile.executor not in ("local", "slurm"):
        bad("profile.executor", f"unknown executor '{recipe.profile.executor}' (local, slurm)")
    if recipe.profile.workers < 1:
        bad("profile.workers", "must be at least 1")
    if not recipe.corpora:
        bad("corpora", "at least one base corpus is required")
    for name, c in recipe.corpora.items():
        if not NAME_RE.match(name):
            bad(f"corpora.{name}", "not a valid source name")
        if c.format not in ("auto", "jsonl", "parquet", "text"):
            bad(f"corpora.{name}.format", f"unknown format '{c.format}' (auto, jsonl, parquet, text)")
        if not c.paths:
            bad(f"corpora.{name}.paths", "no paths given")
        elif check_files:
            for pat in c.paths:
                if not expand_paths([pat]):
                    bad(f"corpora.{name}.paths", f"no file matches '{pat}'")
    validate_synthetic(recipe.synthetic, recipe.corpora, recipe.eval.suite, bad)
    validate_generator(recipe.generator, bad)
    if recipe.verifier is not None:  # the same checks, named by the verifier's keys
        validate_generator(recipe.verifier, lambda key, msg: bad(key.replace("generator", "verifier", 1), msg))
    validate_decontamination(recipe.decontamination, bad)

    tok = recipe.tokenizer
    continuation = recipe.base.from_ is not None
    if continuation and tok.kind is not None:
        bad("tokenizer.kind", f"'{tok.kind}': continuation arms (base.from) tokenize with the base's own tokenizer; "
                              f"remove the tokenizer section's kind")
    elif tok.kind not in (None, "bpe", "hf"):
        bad("tokenizer.kind", f"unknown tokenizer kind '{tok.kind}' (bpe, hf)")
    if tok.kind == "hf":
        if not tok.path:
            bad("tokenizer.path", "required when tokenizer.kind is 'hf'")
        elif check_files and not (os.path.isfile(tok.path) or os.path.isfile(os.path.join(tok.path, "tokenizer.json"))):
            bad("tokenizer.path", f"no tokenizer.json at '{tok.path}'")
    if tok.kind in (None, "bpe") and not (256 + 1 < tok.vocab_size <= 2**31 - 1):
        bad("tokenizer.vocab_size", f"{tok.vocab_size} is too small for a byte-level BPE (> 257)")
    for c in tok.train_on:
        if c not in recipe.corpora:
            bad("tokenizer.train_on", f"unknown corpus '{c}'{did_you_mean(c, recipe.corpora)}")

    d = recipe.data
    if bad_number(d.tokens) or d.tokens <= 0:
        bad("data.tokens", f"the token budget must be a positive number, got {d.tokens}")
    if d.seq_length < 8:
        bad("data.seq_length", f"{d.seq_length} is too short (at least 8)")
    if bad_number(d.max_epochs) or d.max_epochs <= 0:
        bad("data.max_epochs", f"must be positive, got {d.max_epochs}")
    try:
        parts = [float(x) for x in d.split.split(",")]
        if len(parts) != 3 or any(x < 0 for x in parts) or parts[0] <= 0:
            raise ValueError
    except ValueError:
        bad("data.split", f"'{d.split}' is not 'train,valid,test' with a positive train part")
    if d.shard_bytes < 1024:
        bad("data.shard_bytes", "must be at least 1024")

    if not recipe.arms:
        bad("arms", "at least one arm is required")
    sources = {**recipe.corpora, **recipe.synthetic}
    seen: set[str] = set()
    for i, arm in enumerate(recipe.arms):
        key = f"arms[{i}]"
        if not NAME_RE.match(arm.name):
            bad(f"{key}.name", f"'{arm.name}' is not a valid arm name")
        if arm.name in seen:
            bad(f"{key}.name", f"duplicate arm name '{arm.name}'")
        if arm.name == "base" and recipe.base.from_ is not None:
            bad(f"{key}.name", "'base' names the base model's own row in a continuation's report; name the arm "
                "otherwise")
        seen.add(arm.name)
        if not arm.mix:
            bad(f"{key}.mix", "an arm mixes at least one source")
        total = 0.0
        for src, share in arm.mix.items():
            if src not in sources:
                bad(f"{key}.mix.{src}", f"unknown source '{src}'{did_you_mean(src, sources)}")
            if bad_number(share) or share < 0:
                bad(f"{key}.mix.{src}", f"share must be a number >= 0, got {share}")
            else:
                total += share
        if arm.mix and not any(bad_number(s) for s in arm.mix.values()) and abs(total - 1.0) > 1e-6:
            bad(f"{key}.mix", f"shares of arm '{arm.name}' sum to {total:.6g}, not 1")
    t = recipe.train
    validate_train(t, bad)
    if not bad_number(d.tokens) and d.tokens > 0 and d.tokens < d.seq_length * t.global_batch_size:
        bad("data.tokens", f"{d.tokens:,} tokens are less than one step of {t.global_batch_size} sequences of "
                           f"{d.seq_length}")
    m = recipe.model
    if continuation and m.preset:
        bad("model", f"preset '{m.preset}' and base.from '{recipe.base.from_}': a continuation arm's model is its "
                     f"base; remove the model section")
    elif not continuation and not m.preset:
        bad("model", "required: a preset name (recipes/models/), or base.from for continuation arms")
    base_shape = validate_base(recipe.base, d.seq_length, bad, check_files)
    if not continuation or base_shape is not None:  # a hub base's shape is checked by the train stage
        s_ = base_shape if continuation else m
        validate_train_for_model(t, s_.num_layers, bad, s_.num_attention_heads,
                                 s_.num_query_groups or s_.num_attention_heads,
                                 s_.ffn_hidden_size or 0, s_.vocab_size or 0)
    pr = recipe.profile
    if pr.nproc_per_node >= 1 and t.tensor_parallel >= 1:
        if pr.nproc_per_node % t.tensor_parallel:
            bad("train.tensor_parallel", f"{t.tensor_parallel} does not divide profile.nproc_per_node "
                                         f"{pr.nproc_per_node}: a layer's shards stay within one node")
        else:
            from harness.executors.slurm import resources

            nodes = (resources(pr, "train").nodes or 1) if pr.executor == "slurm" else 1
            validate_parallel(t, pr.nproc_per_node * nodes, bad)
    if m.hidden_size % max(1, m.num_attention_heads):
        bad("model.hidden_size", f"{m.hidden_size} is not a multiple of model.num_attention_heads "
                                 f"{m.num_attention_heads}")
    if m.num_query_groups and m.num_attention_heads % m.num_query_groups:
        bad("model.num_query_groups", f"{m.num_query_groups} does not divide {m.num_attention_heads} heads")
    validate_eval(recipe.eval, bad)
    arm_names = [a.name for a in recipe.arms]
    for key, who in [("report.baseline", recipe.report.baseline)] + [("report.controls", c)
                                                                    for c in recipe.report.controls]:
        if who not in arm_names:
            bad(key, f"no arm named '{who}'{did_you_mean(who, arm_names)}")
    if recipe.report.bootstrap < 100:
        bad("report.bootstrap", "use at least 100 replicates")
    validate_wandb(recipe.wandb, bad)
    if recipe.profile.nproc_per_node < 1:
        bad("profile.nproc_per_node", "must be at least 1")
    _validate_slurm(recipe.profile.slurm, bad)
    if not recipe.seeds:
        bad("seeds", "at least one training seed is required")
    if len(set(recipe.seeds)) != len(recipe.seeds):
        bad("seeds", f"duplicate seeds in {list(recipe.seeds)}")
    for name, s in recipe.synthetic.items():  # the unseeded control's request count is known now
        if s.kind == "unseeded_qa" and s.tokens_per_request is not None:
            if bad_number(s.tokens_per_request) or s.tokens_per_request <= 0:
                bad(f"synthetic.{name}.tokens_per_request", f"must be positive, got {s.tokens_per_request}")
                continue
            problem = estimate_problem(name, passages_needed(s.kind, s.passages, 0, 1, 0) * s.samples_per_seed,
                                       s.tokens_per_request, shares_of(recipe, name), recipe.data.tokens,
                                       recipe.data.max_epochs)
            if problem:
                bad(f"synthetic.{name}", problem.split(": ", 1)[1])
    if recipe.scales:
        validate_scales(recipe, bad)
        if not p:  # each scale is a recipe of its own: its model, budget and data checked as such
            for i, sc in enumerate(recipe.scales):
                try:
                    validate(scaled(recipe, sc), where, check_files)
                except RecipeError as e:
                    p += [(w, f"scales[{i}] ({sc.name}): {m}") for w, m in e.problems]
    if p:
        raise RecipeError(p)
    if check_files:
        _check_data_sufficiency(recipe, where)


def shares_of(recipe: Recipe, source: str) -> dict[str, float]:
    """{arm: its share of `source`} for the arms that use it."""
    return {a.name: a.mix[source] for a in recipe.arms if a.mix.get(source, 0) > 0}


TIME_RE = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")
MEM_RE = re.compile(r"^\d+[KMGT]?$")


def _validate_slurm(sl: SlurmConfig, bad) -> None:
    from harness.stages import kinds

    known = ["default", *kinds()] if sl.resources else []
    for kind, res in sl.resources.items():
        key = f"profile.slurm.resources.{kind}"
        if kind not in known:
            bad(key, f"unknown stage kind '{kind}'{did_you_mean(kind, known)} (default, {', '.join(known[1:])})")
        if res.time is not None and not TIME_RE.match(res.time):
            bad(f"{key}.time", f"'{res.time}' is not a Slurm time ([D-]HH:MM:SS, or minutes)")
        if res.mem is not None and not MEM_RE.match(str(res.mem)):
            bad(f"{key}.mem", f"'{res.mem}' is not a Slurm memory size (e.g. 4000, 16G)")
        for field_ in ("nodes", "gpus_per_node", "cpus_per_task"):
            v = getattr(res, field_)
            if v is not None and v < (0 if field_ == "gpus_per_node" else 1):
                bad(f"{key}.{field_}", f"must be at least {0 if field_ == 'gpus_per_node' else 1}, got {v}")
        if res.nodes and res.nodes > 1 and kind not in ("train", "default"):
            bad(f"{key}.nodes", f"only training runs across nodes; a {kind} stage is one process")
    if sl.resources.get("default") and (sl.resources["default"].nodes or 1) > 1:
        bad("profile.slurm.resources.default.nodes", "only training runs across nodes: set resources.train.nodes")
    if sl.max_requeues < 0 or sl.signal_seconds < 0:
        bad("profile.slurm", "max_requeues and signal_seconds must be >= 0")



def _check_data_sufficiency(recipe: Recipe, where: str) -> None:
    """Refuse, before any work, a blend that surely needs more data than exists.

    Before tokenization the exact token count is unknown, but a byte-level tokenizer never yields more tokens than
    bytes (plus one EOD per document), so a file's size bounds its tokens from above. The exact check runs again
    in the blend stage, on real token counts, before any training starts.
    """
    p = []
    for name, c in recipe.corpora.items():
        upper = sum(os.path.getsize(f) for f in expand_paths(c.paths))
        if any(f.endswith(".gz") or f.endswith(".parquet") for f in expand_paths(c.paths)):
            upper *= 20  # compressed: a loose bound (compression ratios above 20 are rare for text)
        for i, arm in enumerate(recipe.arms):
            share = arm.mix.get(name, 0.0)
            need = share * recipe.data.tokens / recipe.data.max_epochs
            if need > upper:
                p.append((where, f"arms[{i}].mix.{name}: arm '{arm.name}' needs {share * recipe.data.tokens:,.0f} "
                                 f"tokens of '{name}', which holds at most {upper:,} bytes: more than "
                                 f"{recipe.data.max_epochs:g} epochs; add at least {need - upper:,.0f} bytes of "
                                 f"data, lower the share or the budget, or raise data.max_epochs"))
    if p:
        raise RecipeError(p)


def to_yaml(recipe: Recipe) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


def to_dict(obj: Any) -> Any:
    """A dataclass (or nested containers of them) as plain JSON-able data."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple, ListConfig)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, (dict, DictConfig)):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj
