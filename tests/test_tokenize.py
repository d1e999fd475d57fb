"""Tokenization into Megatron's format: read back by megatron.core, bad records skipped and located, byte-stable
across workers and shard sizes, and resumable after SIGKILL."""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from conftest import make_docs, write_jsonl
from harness.data import tokenizer as tkz

EOD = "<|endoftext|>"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tkz.train_bpe(make_docs(400, seed=9), 700, EOD, path)
    return path


def read_megatron(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    return [np.array(ds[i]) for i in range(len(ds))], ds


def expected_tokens(bpe, docs):
    tok = Tokenizer.from_file(str(bpe))
    eod = tok.token_to_id(EOD)
    return [np.array(tok.encode(d, add_special_tokens=False).ids + [eod]) for d in docs]


def test_megatron_reads_our_files(tmp_path, cli, bpe):
    docs = make_docs(300, seed=3)
    write_jsonl(tmp_path / "c.jsonl", docs)
    code, out = cli("tokenize", tmp_path / "c.jsonl", "--tokenizer", bpe, "-o", tmp_path / "out")
    assert code == 0, out
    got, ds = read_megatron(tmp_path / "out")
    want = expected_tokens(bpe, docs)
    assert len(got) == len(want) == 300
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert ds.index.dtype == np.uint16  # the vocabulary fits
    assert np.array_equal(ds.document_indices, np.arange(301))
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["tokens"] == sum(len(w) for w in want) and summary["documents"] == 300


def test_bad_lines_are_skipped_and_located(tmp_path, cli, bpe):
    docs = make_docs(50, seed=4)
    lines = [json.dumps({"text": d}) for d in docs]
    lines[3] = '{"text": "unterminated'
    lines[10] = json.dumps({"body": "wrong field"})
    lines[20] = json.dumps({"text": 42})
    lines[30] = json.dumps(["not", "an", "object"])
    lines[40] = json.dumps({"text": "   "})
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    code, out = cli("tokenize", tmp_path / "c.jsonl", "--tokenizer", bpe, "-o", tmp_path / "out")
    assert code == 0, out
    flat = " ".join(out.split())
    for line, reason in ((4, "invalid json"), (11, "missing field"), (21, "wrong type"), (31, "not an object")):
        assert f"c.jsonl:{line}: {reason}" in flat, out
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["malformed"] == 4 and summary["empty"] == 1 and summary["documents"] == 45
    got, _ = read_megatron(tmp_path / "out")
    keep = [d for i, d in enumerate(docs) if i not in (3, 10, 20, 30, 40)]
    assert all(np.array_equal(g, w) for g, w in zip(got, expected_tokens(bpe, keep)))


def test_line_numbers_in_later_shards(tmp_path, cli, bpe):
    docs = make_docs(400, seed=5)
    lines = [json.dumps({"text": d}) for d in docs]
    lines[350] = "{broken"
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    code, out = cli("tokenize", tmp_path / "c.jsonl", "--tokenizer", bpe, "-o", tmp_path / "out",
                    "--shard-bytes", 20000)
    assert code == 0 and "c.jsonl:351: invalid json" in " ".join(out.split()), out


def test_output_is_identical_across_workers_and_shards(tmp_path, cli, bpe):
    write_jsonl(tmp_path / "a.jsonl", make_docs(500, seed=6))
    write_jsonl(tmp_path / "b.jsonl", make_docs(300, seed=7))
    outs = []
    for i, (workers, shard) in enumerate([(1, 1 << 26), (2, 30000), (1, 7777)]):
        prefix = tmp_path / f"o{i}"
        code, out = cli("tokenize", tmp_path / "a.jsonl", tmp_path / "b.jsonl", "--tokenizer", bpe, "-o", prefix,
                        "--workers", workers, "--shard-bytes", shard)
        assert code == 0, out
        outs.append(((tmp_path / f"o{i}.bin").read_bytes(), (tmp_path / f"o{i}.idx").read_bytes()))
    assert outs[0] == outs[1] == outs[2]


def test_formats_gzip_parquet_text(tmp_path, cli, bpe):
    docs = make_docs(60, seed=8)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        for d in docs[:20]:
            f.write(json.dumps({"content": d}) + "\n")
    pq.write_table(pa.table({"content": docs[20:40]}), tmp_path / "b.parquet")
    (tmp_path / "txt").mkdir()
    for i, d in enumerate(docs[40:]):
        (tmp_path / "txt" / f"{i:03d}.txt").write_text(d)
    code, out = cli("tokenize", tmp_path / "a.jsonl.gz", tmp_path / "b.parquet", tmp_path / "txt",
                    "--tokenizer", bpe, "-o", tmp_path / "out", "--text-field", "content")
    assert code == 0, out
    got, _ = read_megatron(tmp_path / "out")
    assert len(got) == 60 and all(np.array_equal(g, w) for g, w in zip(got, expected_tokens(bpe, docs)))


def test_no_valid_document_is_an_error(tmp_path, cli, bpe):
    (tmp_path / "c.jsonl").write_text('{"x": 1}\nnot json\n')
    code, out = cli("tokenize", tmp_path / "c.jsonl", "--tokenizer", bpe, "-o", tmp_path / "out")
    assert code == 2 and "no valid document" in out
    assert not (tmp_path / "out.bin").exists()


def test_missing_input_is_an_error(tmp_path, cli, bpe):
    code, out = cli("tokenize", tmp_path / "nope.jsonl", "--tokenizer", bpe, "-o", tmp_path / "out")
    assert code == 2 and "nope.jsonl" in out


def test_sigkill_midway_then_rerun_is_byte_identical(tmp_path, bpe):
    write_jsonl(tmp_path / "big.jsonl", make_docs(6000, seed=11))  # ~4 MB, ~60 shards
    args = lambda prefix: [sys.executable, "-m", "harness", "tokenize", str(tmp_path / "big.jsonl"), "--tokenizer",
                           str(bpe), "-o", str(prefix), "--shard-bytes", "65536", "--threads", "1"]
    subprocess.run(args(tmp_path / "ref"), check=True, capture_output=True)

    shards = tmp_path / "killed.partial" / "shards"
    # at a lower priority, so that under the suite's load the kill still lands midway
    proc = subprocess.Popen(["nice", "-n", "10", *args(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(shards.glob("*.json"))) < 5:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = len(list(shards.glob("*.json")))
    assert 5 <= done < 60, f"the kill should land midway ({done} shards done)"
    assert not (tmp_path / "killed.bin").exists(), "nothing is published by a killed run"
    subprocess.run(args(tmp_path / "killed"), check=True, capture_output=True)
    assert (tmp_path / "killed.bin").read_bytes() == (tmp_path / "ref.bin").read_bytes()
    assert (tmp_path / "killed.idx").read_bytes() == (tmp_path / "ref.idx").read_bytes()
    assert not (tmp_path / "killed.partial").exists()


def test_50mb_corpus_with_a_bad_line(tmp_path, cli, bpe):
    docs = [json.dumps({"text": d}) for d in make_docs(2000, seed=12)]
    block = "\n".join(docs) + "\n"
    reps = int(50e6 // len(block)) + 1
    with open(tmp_path / "big.jsonl", "w") as f:
        for r in range(reps):
            f.write(block)
            if r == reps // 2:
                f.write('{"text": "truncated record\n')
    assert (tmp_path / "big.jsonl").stat().st_size >= 50e6
    bad_line = (reps // 2 + 1) * 2000 + 1
    code, out = cli("tokenize", tmp_path / "big.jsonl", "--tokenizer", bpe, "-o", tmp_path / "out",
                    "--shard-bytes", 16 * 2**20)
    assert code == 0, out
    assert f"big.jsonl:{bad_line}: invalid json" in " ".join(out.split())
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["documents"] == reps * 2000 and summary["malformed"] == 1
    _, ds = read_megatron(tmp_path / "out")
    assert len(ds) == reps * 2000


def test_train_bpe_publishes_the_tokenizer_it_encoded_with(tmp_path, cli):
    """--train-bpe N: the trained tokenizer is published beside the tokens as PREFIX.tokenizer.json, and it is the
    one the tokens were made with (re-encoding the documents with it, plus EOD, gives the .bin megatron.core reads)."""
    docs = make_docs(200, seed=13)
    write_jsonl(tmp_path / "c.jsonl", docs)
    code, out = cli("tokenize", tmp_path / "c.jsonl", "--train-bpe", 500, "-o", tmp_path / "out")
    assert code == 0, out
    tok_path = tmp_path / "out.tokenizer.json"
    assert tok_path.is_file() and not (tmp_path / "out.partial").exists()
    tok = Tokenizer.from_file(str(tok_path))
    assert tok.get_vocab_size(with_added_tokens=True) == 500
    eod = tok.token_to_id(EOD)
    summary = json.loads((tmp_path / "out.json").read_text())
    assert (summary["vocab_size"], summary["eod_id"]) == (500, eod)
    got, ds = read_megatron(tmp_path / "out")
    want = [np.array(tok.encode(d, add_special_tokens=False).ids + [eod]) for d in docs]
    assert len(got) == len(want) == 200 and ds.index.dtype == np.uint16
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert max(int(g.max()) for g in got) > 300, "the documents use the trained merges, not bytes alone"


def test_large_vocabulary_is_written_as_int32(tmp_path, cli):
    """A vocabulary over 65,500 ids (Megatron's uint16 limit) is written as int32, which megatron.core reads as
    int32 with ids above 65,535 intact."""
    from tokenizers import models, pre_tokenizers

    n_words = 70_000
    vocab = {EOD: 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(n_words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "wordlevel.json"))
    rng = np.random.default_rng(0)
    ids = [rng.integers(2, n_words + 2, size=rng.integers(5, 60)) for _ in range(80)]
    ids[0][:4] = [65_535, 65_536, 65_537, n_words + 1]  # just past uint16, and the largest id
    docs = [" ".join(f"w{i - 2}" for i in doc) for doc in ids]
    write_jsonl(tmp_path / "c.jsonl", docs)
    code, out = cli("tokenize", tmp_path / "c.jsonl", "--tokenizer", tmp_path / "wordlevel.json",
                    "-o", tmp_path / "out")
    assert code == 0, out
    assert "(int32)" in out
    got, ds = read_megatron(tmp_path / "out")
    assert ds.index.dtype == np.int32
    assert len(got) == 80 and all(g.dtype == np.int32 for g in got)
    assert all(np.array_equal(g, np.append(w, 0)) for g, w in zip(got, ids))
    assert got[0][:4].tolist() == [65_535, 65_536, 65_537, n_words + 1]
    assert sum(int((g > 65_535).sum()) for g in got) > 100


def _blend_rows(out: str) -> dict[str, list[str]]:
    """The rows of `harness blend`'s table: source -> its cells (share, realised, tokens wanted, ...)."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        cells = [c for c in cells if c]
        if len(cells) == 6 and cells[0] != "source":
            rows[cells[0]] = cells[1:]
    return rows


def test_blend_cli_realises_shares_and_refuses_bad_ones(tmp_path, cli, bpe):
    """`harness blend PREFIX=SHARE ...`: the realised shares it prints are those of megatron.core's blend (its
    dataset index, read back from the cache) and within 1% of the shares asked; a bad source list exits with 2 and
    names what is wrong, before anything is built."""
    for name, n, seed in (("a", 400, 21), ("b", 250, 22)):
        write_jsonl(tmp_path / f"{name}.jsonl", make_docs(n, seed=seed))
        code, out = cli("tokenize", tmp_path / f"{name}.jsonl", "--tokenizer", bpe, "-o", tmp_path / name)
        assert code == 0, out
    a, b, nope = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "nope")
    common = ("--tokenizer", bpe, "--tokens", 30_000, "--seq-length", 64)
    code, out = cli("blend", f"{a}=0.75", f"{b}=0.25", *common, "--cache", tmp_path / "cache")
    assert code == 0, out
    samples = int(re.search(r"blend of 30,000 tokens \((\d+) samples of 64\)", " ".join(out.split()))[1])
    assert samples * 64 >= 30_000, "the budget is covered"
    rows = _blend_rows(out)
    assert set(rows) == {a, b}, out
    assert [rows[a][0], rows[b][0]] == ["0.7500", "0.2500"]
    assert [rows[a][2], rows[b][2]] == ["22,500", "7,500"]  # tokens wanted: share x budget
    [index] = (tmp_path / "cache").glob("*-BlendedDataset-train-dataset_index.npy")
    counts = np.bincount(np.load(index), minlength=2)
    assert counts.sum() == samples
    for i, (prefix, share) in enumerate(((a, 0.75), (b, 0.25))):
        realised = float(rows[prefix][1])
        assert realised == pytest.approx(counts[i] / counts.sum(), abs=5e-5), "the table is megatron's index"
        assert abs(realised - share) <= max(0.01 * share, 1 / samples)

    for args, culprit in (((f"{a}=0.75", f"{b}=0.5"), "sum to 1, got 1.25 (0.75 + 0.5)"),
                          ((f"{a}=1.2", f"{b}=-0.2"), f"'{b}=-0.2': a share must be a finite number >= 0"),
                          ((f"{a}=nan", f"{b}=0.25"), f"'{a}=nan': a share must be a finite number >= 0"),
                          ((f"{a}=inf", f"{b}=0.25"), f"'{a}=inf': a share must be a finite number >= 0"),
                          ((f"{a}=0.5", f"{a}=0.5"), f"'{a}=0.5': {a} is given twice"),
                          ((f"{a}=0.75", f"{nope}=0.25"), f"'{nope}=0.25': no indexed dataset at {nope}.bin/.idx"),
                          ((f"{a}=0.75", f"{b}=x"), "share 'x' is not a number"),
                          ((f"{a}=0.75", b), f"'{b}': expected PREFIX=SHARE")):
        code, out = cli("blend", *args, *common, "--cache", tmp_path / "bad")
        assert code == 2 and culprit in " ".join(out.split()), (args, out)
        assert "Traceback" not in out
    assert not (tmp_path / "bad").exists(), "a refused blend builds nothing"
