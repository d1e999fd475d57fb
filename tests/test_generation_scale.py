"""Generation at the paper's scale, checked at small sizes: hub model names, the managed server's Hugging Face cache,
vLLM settings (validation and the `vllm serve` command line), requests built per shard in linear time, the
passage stage, the request cache's writer thread and per-stage files, chunked commits through the real local
transformers backend, and the streaming filter against datasketch's own LSH."""

import collections
import json
import logging
import os
import random
import sqlite3
import threading
import time

import httpx
import pytest

from harness import recipe as rcp
from harness.generation import models, pipeline
from harness.generation.backends import BackendOptions, Completion, GenerationError, Request, make
from harness.generation.cache import RequestCache
from harness.generation.config import engine_kwargs, serve_args
from harness.generation.driver import Driver
from harness.generation.prompts import Templates
from harness.generation.server import ManagedServer, argv, server_env, transformers_cache_args
from harness.plan import build
from harness.store import Store

from conftest import base_recipe, write_recipe

MODEL = str(models.MODELS / "smollm2-135m-instruct")
needs_model = pytest.mark.skipif(not os.path.isdir(MODEL), reason="run `harness assets` (make setup) first")
HUB = "Qwen/Qwen2.5-7B-Instruct"


def _load(tmp_path, generator: dict, synthetic: dict | None = None, name="r.yaml"):
    syn = synthetic or {"tsqa": {"kind": "task_seeded", "tasks": ["offline_arc_easy"]}}
    r = base_recipe(tmp_path, synthetic=syn, generator=generator)
    r["arms"] += [{"name": n, "mix": {"web": 0.9, n: 0.1}} for n in syn]
    return rcp.load(write_recipe(tmp_path / name, r))


# ------------------------------------------------------------------------------------------- models, servers


def test_hub_names_stay_hub_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert models.resolve(HUB) == HUB, "a hub name is not a path under the working directory"
    (tmp_path / "local").mkdir()
    assert models.resolve("local") == str(tmp_path / "local") and models.resolve("./x") == str(tmp_path / "x")
    rec = _load(tmp_path, {"backend": "openai", "server": "managed", "server_kind": "vllm", "model": HUB})
    assert rec.generator.model == HUB, "nor a path beside the recipe"
    plan = build(rec, Store(tmp_path / "runs"))
    assert plan.by_id("generate/tsqa").config["model_id"].startswith(f"openai/vllm/server:{HUB}")
    assert _load(tmp_path, {"backend": "vllm", "model": HUB}).generator.model == HUB
    # a model folder next to the recipe is still found relative to it
    rec = _load(tmp_path, {"backend": "transformers", "model": "./local"})
    assert rec.generator.model == str(tmp_path / "local")


def test_managed_server_finds_the_users_hub_cache(tmp_path):
    work = tmp_path / "stage"
    # HF_HOME alone: its hub folder, created for transformers serve (which needs it to exist)
    env = server_env("transformers", {"HF_HOME": str(tmp_path / "hf")}, work)
    assert "HF_HUB_CACHE" not in env and (tmp_path / "hf" / "hub").is_dir()
    env = server_env("transformers", {"HF_HUB_CACHE": str(tmp_path / "hc"), "HF_HUB_OFFLINE": "0"}, work)
    assert env["HF_HUB_CACHE"] == str(tmp_path / "hc") and env["HF_HUB_OFFLINE"] == "0", "the user's values stand"
    # the default cache under XDG_CACHE_HOME: used when it exists, else a folder in the run (transformers only)
    (tmp_path / "xdg" / "huggingface" / "hub").mkdir(parents=True)
    assert "HF_HUB_CACHE" not in server_env("transformers", {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, work)
    env = server_env("transformers", {"XDG_CACHE_HOME": str(tmp_path / "none")}, work)
    assert env["HF_HUB_CACHE"] == str(work / "hf-hub") and (work / "hf-hub").is_dir()
    assert "HF_HUB_CACHE" not in server_env("vllm", {"XDG_CACHE_HOME": str(tmp_path / "none")}, work)
    # offline only when the recipe (generator.offline) or the environment says so
    assert "HF_HUB_OFFLINE" not in server_env("vllm", {}, work)
    assert server_env("vllm", {}, work, offline=True)["HF_HUB_OFFLINE"] == "1"
    assert server_env("vllm", {"HF_HUB_OFFLINE": "1"}, work, offline=False)["HF_HUB_OFFLINE"] == "0"


@needs_model
def test_transformers_serve_with_only_hf_home(tmp_path, monkeypatch):
    """The real server answers /v1/models with the user's HF_HOME and no HF_HUB_CACHE; and its KV cache is sized to
    the stage's requests (generate.py passes these flags), not to the machine's free memory: unsized, the server's
    processes held 14 GB of this machine's 24 once it answered (and spent 12 s warming that cache up)."""
    import psutil

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with ManagedServer("transformers", MODEL, tmp_path / "server.log",
                       extra_args=transformers_cache_args(concurrency=4, max_tokens=64)) as server:
        assert httpx.get(f"{server.base_url}/models", timeout=30).status_code == 200
        tree = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
        rss_mb = sum(p.memory_info().rss for p in tree) >> 20
    assert rss_mb < 4000, f"the server's processes hold {rss_mb} MB"
    assert (tmp_path / "hf" / "hub").is_dir() and not (tmp_path / "hf-hub").exists()


def test_vllm_settings_reach_the_command_line_and_are_validated(tmp_path):
    vllm = {"max_model_len": 8192, "gpu_memory_utilization": 0.85, "tensor_parallel_size": 2,
            "extra_args": ["--enable-prefix-caching", "--max-num-seqs", "512"]}
    rec = _load(tmp_path, {"backend": "openai", "server": "managed", "server_kind": "vllm", "model": HUB,
                           "vllm": vllm})
    plan = build(rec, Store(tmp_path / "runs"))
    spec = plan.by_id("generate/tsqa")
    cmd = argv("vllm", "vllm", spec.config["generator"]["model"], 8000, serve_args(spec.runtime["vllm"]))
    assert cmd == ["vllm", "serve", HUB, "--host", "127.0.0.1", "--port", "8000", "--served-model-name", HUB,
                   "--max-model-len", "8192", "--gpu-memory-utilization", "0.85", "--tensor-parallel-size", "2",
                   "--generation-config", "vllm", "--enable-prefix-caching", "--max-num-seqs", "512"]
    assert engine_kwargs(spec.runtime["vllm"]) == {"max_model_len": 8192, "gpu_memory_utilization": 0.85,
                                                   "tensor_parallel_size": 2, "generation_config": "vllm"}
    # what decides the samples is in the stage hash and the cache's model identity
    assert spec.config["generator"]["vllm"] == {"generation_config": "vllm", "max_model_len": 8192}
    auto = build(_load(tmp_path, {"backend": "vllm", "model": HUB, "vllm": {"generation_config": "auto"}}, name="a.yaml"),
                 Store(tmp_path / "runs")).by_id("generate/tsqa")
    assert auto.config["model_id"].endswith("/generation-config:auto")

    bad = {"max_model_len": 0, "gpu_memory_utilization": 1.5, "tensor_parallel_size": 0, "chunk_size": 0,
           "generation_config": "model", "extra_args": ["--port=9", ""]}
    with pytest.raises(rcp.RecipeError) as e:
        _load(tmp_path, {"backend": "vllm", "model": HUB, "vllm": bad}, name="bad.yaml")
    msg = str(e.value)
    for key in ("max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "chunk_size",
                "generation_config", "extra_args[0]", "extra_args[1]"):
        assert f"generator.vllm.{key}:" in msg, (key, msg)
    with pytest.raises(rcp.RecipeError) as e:  # transformers loads weights itself: a folder or a catalogue name
        _load(tmp_path, {"backend": "transformers", "model": HUB}, name="hf.yaml")
    assert "generator.model: 'Qwen/Qwen2.5-7B-Instruct' is neither a model folder nor a catalogue name" in str(e.value)
    with pytest.raises(rcp.RecipeError) as e:
        _load(tmp_path, {"backend": "vllm", "model": HUB, "vllm": {"max_model_lenght": 4}}, name="typo.yaml")
    assert "did you mean 'generator.vllm.max_model_len'" in str(e.value)


def test_vllm_serve_comes_from_its_own_environment_never_from_path(tmp_path, monkeypatch):
    """vLLM pins its own torch, so the managed server's `vllm` is generator.vllm.env's, else the one beside the
    job's interpreter, else <repo>/.venv-vllm's - never whatever PATH holds."""
    from harness.generation import server

    def fake_exe(folder):
        exe = folder / "bin" / "vllm"
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
        return exe

    on_path = fake_exe(tmp_path / "module")
    own = fake_exe(tmp_path / "venv-vllm")
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{os.environ['PATH']}")
    assert server._command("vllm", HUB, 8000, [], str(tmp_path / "venv-vllm"))[0] == str(own)
    with pytest.raises(GenerationError, match=r"generator.vllm.env: no executable bin/vllm in"):
        server._command("vllm", HUB, 8000, [], str(tmp_path / "nowhere"))
    if not (server.VLLM_ENV / "bin" / "vllm").exists():
        with pytest.raises(GenerationError, match="found neither beside this job's interpreter"):
            server._command("vllm", HUB, 8000, [])
    r = _load(tmp_path, {"backend": "openai", "server": "managed", "server_kind": "vllm", "model": HUB,
                         "vllm": {"env": str(tmp_path / "venv-vllm")}})
    spec = build(r, Store(tmp_path / "runs")).by_id("generate/tsqa")
    assert spec.runtime["vllm"]["env"] == str(tmp_path / "venv-vllm") and "env" not in str(spec.config)


# ------------------------------------------------------------------------------------------- requests per shard


def _seeds(n: int, subtasks: int = 3) -> list[dict]:
    return [{"seed_id": f"t/train/{i}", "task": "offline_arc_easy", "subtask": f"s{i % subtasks}",
             "question": f"Which {i} is it?", "choices": ["a", "b", "c", "d"], "answer_index": i % 4,
             "answer_text": "abcd"[i % 4], "context": None} for i in range(n)]


CFG = {"samples_per_seed": 3, "fewshot": 3, "context_share": 0.5}


def test_shards_build_exactly_the_unsharded_requests():
    seeds, tpl = _seeds(60), Templates()
    samp = pipeline.Sampling(0.8, 0.95, 64, 7)
    passages = [{"passage_id": f"doc{i}.p0", "text": f"passage {i}"} for i in range(90)]
    whole, meta = pipeline.seeded_requests(seeds, CFG, tpl, passages, samp)
    parts = [pipeline.seeded_requests(seeds, CFG, tpl, passages, samp, (i, 4)) for i in range(4)]
    assert sorted((r for p in parts for r in p[0]), key=lambda r: r.key) == sorted(whole, key=lambda r: r.key)
    assert {k: v for p in parts for k, v in p[1].items()} == meta
    assert all(pipeline.shard_of(m, 4) == i for i, p in enumerate(parts) for m in p[1].values())
    assert 0 < sum(m["passage_id"] is not None for m in meta.values()) < len(meta)
    for r in whole:  # the seed first, then others of its subtask, never itself again, no repeats
        shown = [line for line in r.messages[0][1].splitlines() if line.startswith("Question: Which")]
        seed = meta[r.key]["seed_id"].rsplit("/", 1)[1]
        assert shown[0] == f"Question: Which {seed} is it?" and len(set(shown)) == len(shown) == 3
        assert all(int(q.split()[2]) % 3 == int(seed) % 3 for q in shown)


@pytest.mark.parametrize("share", [0.0, 0.2, 1.0])
def test_context_share_is_the_share_of_grounded_requests(share):
    """180 requests: at 0 none grounded, at 1 all, at 0.2 about a fifth (binomial sd 0.03; an inverted draw gives
    0.8). Every grounded request's prompt holds its passage."""
    passages = [{"passage_id": f"doc{i}.p0", "text": f"passage number {i} of the corpus"} for i in range(90)]
    reqs, meta = pipeline.seeded_requests(_seeds(60), {**CFG, "context_share": share}, Templates(), passages,
                                          pipeline.Sampling(0.8, 0.95, 64, 7))
    grounded = {k for k, m in meta.items() if m["passage_id"] is not None}
    assert abs(len(grounded) / len(meta) - share) <= 0.09, (len(grounded), len(meta))
    for r in reqs:
        shown = "passage number " in r.messages[0][1]
        assert shown == (r.key in grounded), r.key


def test_fewshot_picks_are_linear_in_the_requests():
    """One subtask of 8000 seeds x 2 samples against one of 2000: the old pick built the subtask's list per request
    (128M steps at 8000), 16 times the work of 2000 seeds where a linear pick does 4 times. A ratio of the two, each
    the best of two runs, so that the suite's load on the machine cancels out (alone: 1.3 s for 8000 seeds)."""

    def best_time(n: int) -> float:
        seeds, times = _seeds(n, subtasks=1), []
        for _ in range(2):
            t0 = time.perf_counter()
            reqs, _ = pipeline.seeded_requests(seeds, {**CFG, "samples_per_seed": 2, "context_share": 0}, Templates(),
                                               None, pipeline.Sampling(0.8, 0.95, 64, 7))
            times.append(time.perf_counter() - t0)
        assert len(reqs) == 2 * n
        return min(times)

    small, large = best_time(2000), best_time(8000)
    assert large / small < 8, (small, large)


def test_passage_stage_sized_to_the_grounded_requests(tmp_path, suite_store, cli):
    syn = {"tsqa": {"kind": "task_seeded", "tasks": ["offline_arc_easy"], "per_task_cap": 8, "samples_per_seed": 5,
                    "context_corpus": "web", "context_share": 0.5},
           "uqa": {"kind": "unseeded_qa", "context_corpus": "web", "passages": 7}}
    r = base_recipe(tmp_path, store=str(suite_store / "runs"), experiment="psg", synthetic=syn,
                    generator={"shards": 3, "model": MODEL})
    r["arms"] += [{"name": n, "mix": {"web": 0.9, n: 0.1}} for n in syn]
    path = write_recipe(tmp_path / "p.yaml", r)
    code, out = cli("run", path, "--only", "passages")
    assert code == 0, out
    from harness.generation.passages import PassageFile
    from harness.plan import Plan

    plan = Plan.load(suite_store / "runs" / "psg" / "plan.json")
    for i in range(3):  # every shard reads the one sample; the seeded one waits for the seeds (its size)
        assert plan.by_id(f"generate/tsqa/shard{i}").deps == {"seeds": "seeds/tsqa", "passages": "passages/tsqa"}
        assert plan.by_id(f"generate/uqa/shard{i}").deps == {"passages": "passages/uqa"}
    assert plan.by_id("passages/tsqa").deps == {"seeds": "seeds/tsqa"} and plan.by_id("passages/uqa").deps == {}
    res = plan.store.manifest("passages", plan.by_id("passages/tsqa").digest)["result"]
    assert res["wanted"] == res["passages"] == 20  # 8 seeds x 5 samples x 0.5
    pf = PassageFile(plan.dir(plan.by_id("passages/uqa")))
    rows = list(pf)
    assert len(pf) == len(rows) == 7 and pf.get_many([5, 2]) == {5: rows[5], 2: rows[2]}
    assert list(pf.where(lambda pid: pid in (rows[4]["passage_id"], rows[1]["passage_id"]))) == [rows[1], rows[4]]
    assert len({p["passage_id"] for p in rows}) == 7 and all(len(p["text"].split()) >= 80 for p in rows)


# ------------------------------------------------------------------------------------------- request cache


def _req(i: int) -> Request:
    return Request(f"k{i}", (("user", f"q{i}"),), 8, 0.5, 1.0, i)


def test_cache_writes_off_the_callers_thread(tmp_path):
    """A put never waits for the disk (here: another process's exclusive lock); flush waits for the commit."""
    cache = RequestCache(tmp_path / "c.sqlite", "m", "delete")
    blocker = sqlite3.connect(tmp_path / "c.sqlite", timeout=1, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    t = threading.Thread(target=lambda: [cache.put(_req(i), Completion(f"a{i}")) for i in range(100)])
    t.start()
    t.join(2)
    assert not t.is_alive(), "put blocked on the database lock"
    assert cache.get(_req(3)).text == "a3", "answers handed over are readable before they are committed"
    blocker.execute("ROLLBACK")
    blocker.close()
    cache.flush()
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == 100
    cache.close()


def test_each_stage_its_own_cache_file_reading_the_others(tmp_path):
    folder = tmp_path / "requests"
    for name, keys in (("tsqa", range(0, 10)), ("tsqa.shard1of3", range(10, 20)), ("tsqa.shard0of2", range(20, 30)),
                       ("uqa.shard0of3", range(40, 41))):
        c = RequestCache.for_stage(folder, name, "m")
        for i in keys:
            c.put(_req(i), Completion(f"{name}:{i}"))
        c.close()
    c = RequestCache.for_stage(folder, "tsqa.shard0of3", "m")
    assert c.path.name == "tsqa.shard0of3.sqlite"
    assert sorted(p.name for p in c.others) == ["tsqa.shard0of2.sqlite", "tsqa.sqlite"], \
        "sibling shards and other sets are skipped"
    got = c.get_many([_req(i) for i in (1, 15, 25, 40)])
    assert {k: v.text for k, v in got.items()} == {"k1": "tsqa:1", "k25": "tsqa.shard0of2:25"}
    assert c.found_elsewhere == 2
    c.close()


@needs_model
def test_driver_commits_each_chunk_before_the_next(tmp_path):
    """A backend that declares commit_every (the offline vllm engine; here the real local transformers backend) gets
    whole batches of about that many requests per call, and finds the previous chunk committed when it starts."""
    backend = make("transformers", BackendOptions(model=MODEL, batch_size=2, chunk_size=2))
    reqs = [Request(f"r{i}", (("user", f"Say {i}."),), 2, 0.7, 0.9, i) for i in range(4)]
    path = tmp_path / "c.sqlite"
    cache = RequestCache(path, "m", window=30)  # a long window: only the driver's flush commits in time
    seen = []
    generate = backend.generate

    def observed(requests, on_done):  # records what is on disk when each call starts, then generates for real
        with sqlite3.connect(path) as db:
            seen.append((len(requests), db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]))
        generate(requests, on_done)

    backend.generate = observed
    driver = Driver(cache, lambda stack: backend, logging.getLogger("test"))
    got = driver.run("chunks", reqs)  # (each generate_batch call costs ~10 s on 2 cores: two calls only)
    assert len(got) == 4 and seen == [(2, 0), (2, 2)], seen
    backend.commit_every = 3  # a chunk is whole batches: rounded up to 4, the last one short
    more = [Request(f"m{i}", (("user", "x"),), 2, 0.7, 0.9, i) for i in range(7)]
    assert [len(c) for c in driver.commit_chunks(more)] == [4, 3]
    cache.close()


# ------------------------------------------------------------------------------------------- filter


def _reference_dedup(items, seeds, threshold):
    """The filter's rule spelled out with datasketch's own LSH, items held in memory."""
    import hashlib

    from datasketch import MinHash, MinHashLSH

    from harness.filters.dedup import item_text
    from harness.filters.text import words

    def mh(ws):
        m = MinHash(num_perm=64, seed=1)
        m.update_batch(list({" ".join(ws[i:i + 3]).encode() for i in range(max(1, len(ws) - 2))}))
        return m

    lsh, exact = MinHashLSH(threshold=threshold, num_perm=64), {}
    for s in seeds:
        ws = words(item_text(s))
        exact.setdefault(hashlib.sha1(" ".join(ws).encode()).hexdigest(), "seed")
        lsh.insert(f"seed:{s['seed_id']}", mh(ws))
    kept, dropped = [], collections.Counter()
    for it in sorted(items, key=lambda x: x["item_id"]):
        ws = words(item_text(it))
        h = hashlib.sha1(" ".join(ws).encode()).hexdigest()
        if h in exact:
            dropped["copies_seed" if exact[h] == "seed" else "exact_duplicate"] += 1
            continue
        near = lsh.query(m := mh(ws))
        if near:
            dropped["copies_seed" if any(k.startswith("seed:") for k in near) else "near_duplicate"] += 1
            continue
        exact[h] = "item"
        lsh.insert(f"item:{it['item_id']}", m)
        kept.append(it)
    return kept, dropped


def test_streaming_dedup_decides_as_datasketch_lsh():
    from harness.filters import dedup

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(300)]
    base = [" ".join(rng.choices(vocab, k=rng.randint(5, 30))) for _ in range(800)]

    def edit(t):
        ws = t.split()
        for _ in range(rng.randint(0, 3)):
            ws[rng.randrange(len(ws))] = rng.choice(vocab)
        return " ".join(ws)

    seeds = [{"seed_id": f"s{i}", "question": b} for i, b in enumerate(base[:150])]
    items = [{"item_id": f"i{i:05d}", "question": edit(rng.choice(base))} for i in range(5000)]
    kept, dropped = dedup.dedup(items, seeds, 0.7)
    ref_kept, ref_dropped = _reference_dedup(items, seeds, 0.7)
    assert [k["item_id"] for k in kept] == [k["item_id"] for k in ref_kept] and dropped == ref_dropped
    assert set(dropped) == {"copies_seed", "exact_duplicate", "near_duplicate"}
    with pytest.raises(ValueError, match="not in item-id order"):
        list(dedup.in_item_order([{"item_id": "b"}, {"item_id": "a"}]))


def test_filter_merges_shards_without_loading_them(tmp_path):
    """The k-way merge yields item-id order from per-shard files, pulling one item per shard at a time."""
    import heapq

    from harness.filters import dedup

    shards = [[{"item_id": f"x{i:03d}"} for i in range(k, 300, 3)] for k in range(3)]
    pulled = [0, 0, 0]

    def stream(k):
        for it in shards[k]:
            pulled[k] += 1
            yield it

    merged = heapq.merge(*(dedup.in_item_order(stream(k)) for k in range(3)), key=lambda it: it["item_id"])
    first = [next(merged) for _ in range(10)]
    assert [f["item_id"] for f in first] == [f"x{i:03d}" for i in range(10)] and max(pulled) <= 5
    assert json.dumps([f["item_id"] for f in list(merged)]) == json.dumps([f"x{i:03d}" for i in range(10, 300)])


_RSS_PROBE = """
import resource, sys
from harness.generation.backends import BackendOptions, Request, make
b = make("transformers", BackendOptions(model=sys.argv[1], batch_size=8, chunk_size=8))
reqs = [Request(f"k{i}", (("user", f"Write a question about topic {i} and its answer."),), 24, 0.8, 0.95, i)
        for i in range(8)]
got = []
b.generate(reqs, lambda r, c: got.append(c))
print(len(got), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@needs_model
def test_local_generation_memory_is_sized_to_its_batch():
    """Left to itself, continuous batching sizes its KV cache from free memory: on a CPU 80-90% of the machine's
    RAM (14 GB of 24 here for eight short requests), and a server or stage beside it meets the OOM killer."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _RSS_PROBE, MODEL], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    n, rss_mb = map(int, res.stdout.split()[-2:])
    # sized: 1.4 GB alone; beside other jobs glibc's per-thread malloc arenas add up to ~3 GB (4.3 GB seen in the
    # suite); unsized: 14 GB
    assert n == 8 and rss_mb < 6000, f"peak RSS {rss_mb} MB"
