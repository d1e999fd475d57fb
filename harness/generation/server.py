"""A managed inference server: the generation stage starts `transformers serve` (CPU) or `vllm serve` (GPU) on
127.0.0.1 itself, waits until it answers, and stops it by its pid afterwards, whatever happened."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness.children import die_with_parent
from harness.generation.backends import GenerationError
from harness.generation.models import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `transformers serve` keeps its KV cache in pages of this many tokens (ContinuousBatchingConfig.page_size's default)
TRANSFORMERS_PAGE = 256
# a request's prompt, as budgeted when sizing that cache: few-shot prompts with a passage stay well under it, and a
# longer one still fits (the cache holds `concurrency` of these; requests beyond what it holds wait their turn)
PROMPT_TOKENS = 2048


def transformers_cache_args(concurrency: int, max_tokens: int) -> list[str]:
    """`transformers serve` flags sizing its KV cache to the stage's concurrent requests. Left to itself,
    continuous batching sizes the cache from free memory - on a CPU 80-90% of the machine's RAM (14 GB of 24 here for
    SmolLM2-135M) - and warms it up at that size before answering (12 s of its 28 s start-up here)."""
    tokens = max(concurrency, 1) * (PROMPT_TOKENS + max_tokens)
    return ["--cb-num-blocks", str(-(-tokens // TRANSFORMERS_PAGE))]


def _transformers_argv(exe: str, model: str, port: int, extra: list[str]) -> list[str]:
    return [exe, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--continuous-batching",
            "--device", "cpu", "--dtype", "float32", *extra]


def _vllm_argv(exe: str, model: str, port: int, extra: list[str]) -> list[str]:
    # the served name is the recipe's model, so the client's `model` field matches whatever path was loaded
    return [exe, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", model, *extra]


VLLM_ENV = ROOT / ".venv-vllm"  # where README's install puts vLLM's own environment (make vllm-env)


def _beside_interpreter_then_path(name: str, env_dir: str | None) -> str | None:
    # the venv's bin folder first: a stage run by a venv's python without the venv activated
    return shutil.which(name, path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def _vllm_executable(name: str, env_dir: str | None) -> str | None:
    """vLLM pins its own torch, so it lives in an environment of its own: generator.vllm.env, else a vllm beside
    the interpreter running this job, else the repository's .venv-vllm. Never PATH: whatever vllm a module or a
    login shell put there may belong to another torch than the one the recipe was tested with."""
    if env_dir:
        exe = Path(env_dir).expanduser() / "bin" / name
        if not os.access(exe, os.X_OK):
            raise GenerationError(f"generator.vllm.env: no executable bin/{name} in '{env_dir}' (create it with "
                                  f"`make vllm-env`, or point it at the environment holding vLLM)")
        return str(exe)
    for folder in (Path(sys.executable).parent, VLLM_ENV / "bin"):
        if os.access(folder / name, os.X_OK):
            return str(folder / name)
    return None


# kind -> (executable, where it is looked up, the message when it is missing, argv builder)
SERVERS = {
    "transformers": ("transformers", _beside_interpreter_then_path, "`transformers serve` is not installed (pip "
                     "install 'transformers[serving]')", _transformers_argv),
    "vllm": ("vllm", _vllm_executable, f"`vllm serve` was found neither beside this job's interpreter "
             f"({os.path.dirname(sys.executable)}) nor in {VLLM_ENV}: install vLLM in an environment of its own "
             f"(`make vllm-env` on a GPU node) or set generator.vllm.env to one", _vllm_argv),
}


def argv(kind: str, exe: str, model: str, port: int, extra: list[str]) -> list[str]:
    """The server's command line with `exe` as its program (testable without the program installed)."""
    if kind not in SERVERS:
        raise GenerationError(f"unknown server kind '{kind}' ({', '.join(SERVERS)})")
    return SERVERS[kind][3](exe, model, port, extra)


def _command(kind: str, model: str, port: int, extra: list[str], env_dir: str | None = None) -> list[str]:
    if kind not in SERVERS:
        raise GenerationError(f"unknown server kind '{kind}' ({', '.join(SERVERS)})")
    name, find, missing, _ = SERVERS[kind]
    exe = find(name, env_dir)
    if exe is None:
        raise GenerationError(missing)
    return argv(kind, exe, model, port, extra)


def user_hub_cache(env: dict) -> Path | None:
    """The Hugging Face hub cache the user points to, however they do it (HF_HUB_CACHE, HF_HOME, the default
    under XDG_CACHE_HOME or ~/.cache), or None when nothing is set and the default folder does not exist."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    default = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface" / "hub"
    return default if default.is_dir() else None


def server_env(kind: str, env: dict, workdir: Path, offline: bool | None = None) -> dict:
    """The managed server's environment: the user's own hub cache and offline setting, except that `transformers
    serve` answers 500 on /v1/models unless its hub cache folder exists - so it gets one in the run when the user
    has none, and the user's is created if they named one that is not there yet."""
    if kind == "transformers":
        hub = user_hub_cache(env)
        if hub is None:
            hub = workdir / "hf-hub"
            env["HF_HUB_CACHE"] = str(hub)
        hub.mkdir(parents=True, exist_ok=True)
    if offline is not None:  # the recipe decides; otherwise the environment's value (or the hub's default) stands
        env["HF_HUB_OFFLINE"] = "1" if offline else "0"
    return env


class ManagedServer:
    """Context manager; `base_url` is the OpenAI API root. The server's output goes to `log_path`."""

    def __init__(self, kind: str, model: str, log_path: Path, port: int | None = None, startup_timeout: float = 300,
                 extra_args: list[str] | None = None, offline: bool | None = None, env_dir: str | None = None):
        self.kind, self.model, self.log_path, self.offline = kind, model, Path(log_path), offline
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.cmd = _command(kind, model, self.port, list(extra_args or []), env_dir)
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self) -> "ManagedServer":
        env = server_env(self.kind, dict(os.environ), self.log_path.parent, self.offline)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True,  # its own group: stopped with all its children
                                     preexec_fn=die_with_parent)  # no orphan servers
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GenerationError(f"{self.kind} server exited with status {self.proc.returncode} while starting "
                                      f"({' '.join(self.cmd)}); its log {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise GenerationError(f"{self.kind} server not healthy after {self.startup_timeout:.0f} s; log "
                              f"{self.log_path}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()
        self.proc = None

    def __enter__(self) -> "ManagedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
