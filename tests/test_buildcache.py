"""The machine's build cache: a second build with the same key is the first one's files (linked), a change of the
building code's source is a new key, and an empty HARNESS_BUILD_CACHE turns it off."""

import importlib.util
import os

from harness import buildcache


def _module(path, text):
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_second_build_comes_from_the_cache_and_a_code_change_builds_anew(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_BUILD_CACHE", str(tmp_path / "cache"))
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "data.txt").write_text(f"built {len(calls)}")

    code = _module(tmp_path / "builder.py", "VERSION = 1\n")
    key = buildcache.key("digest-a", code)
    assert buildcache.fetch_or_build("thing", key, tmp_path / "one", build) is False
    assert buildcache.fetch_or_build("thing", key, tmp_path / "two", build) is True
    assert len(calls) == 1 and (tmp_path / "two" / "sub" / "data.txt").read_text() == "built 1"
    assert os.stat(tmp_path / "two" / "sub" / "data.txt").st_ino == \
        os.stat(tmp_path / "cache" / "thing" / key / "sub" / "data.txt").st_ino  # linked, not copied
    assert buildcache.key("digest-b", code) != key  # other inputs
    changed = _module(tmp_path / "builder.py", "VERSION = 2\n")
    assert buildcache.key("digest-a", changed) != key  # other code
    assert buildcache.fetch_or_build("thing", buildcache.key("digest-a", changed), tmp_path / "three", build) is False
    assert (tmp_path / "three" / "sub" / "data.txt").read_text() == "built 2"

    monkeypatch.setenv("HARNESS_BUILD_CACHE", "")
    assert buildcache.fetch_or_build("thing", key, tmp_path / "four", build) is False and len(calls) == 3
