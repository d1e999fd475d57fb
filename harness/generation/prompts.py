"""Prompt templates are versioned files (Jinja2) under harness/generation/templates/, or in a folder a recipe
names; the hash of each template used goes into the stage's config, so an edited template regenerates."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2

BUILTIN = Path(__file__).resolve().parent / "templates"
NAMES = ("similar_mc", "similar_completion", "similar_yesno", "similar_open", "enrich", "verify", "unseeded_qa")


class Templates:
    def __init__(self, folder: str | None = None):
        self.folders = [Path(folder)] if folder else []
        self.folders.append(BUILTIN)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader([str(f) for f in self.folders]),
                                      undefined=jinja2.StrictUndefined, keep_trailing_newline=False)

    def path(self, name: str) -> Path:
        for f in self.folders:
            if (f / f"{name}.j2").is_file():
                return f / f"{name}.j2"
        raise FileNotFoundError(f"no prompt template '{name}.j2' in {', '.join(map(str, self.folders))}")

    def hashes(self, names=NAMES) -> dict[str, str]:
        return {n: hashlib.sha256(self.path(n).read_bytes()).hexdigest()[:16] for n in names}

    def render(self, name: str, **kw) -> str:
        return self.env.get_template(f"{name}.j2").render(**kw).strip()
