"""Stages `train` (one arm, one seed: a megatron.core pretraining run in its own processes) and `export` (the final
checkpoint as a transformers LlamaForCausalLM folder with its tokenizer)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

from harness.children import die_with_parent
from harness.data import indexed
from harness.executors.worker import in_worker
from harness.stages import INTERRUPTED, Stage, StageContext, StageInterrupted, register


def _check_inputs(ctx: StageContext, shape, blend: dict, gbs: int) -> int:
    """Bad input stops here, before any model is built."""
    for s in blend["sources"]:
        if not indexed.exists(s["prefix"]):
            raise FileNotFoundError(f"source '{s['name']}': no indexed dataset at {s['prefix']}.bin/.idx")
        if s["available_tokens"] <= shape.seq_length:
            raise ValueError(f"source '{s['name']}' has {s['available_tokens']} training tokens: it cannot fill one "
                             f"sequence of {shape.seq_length}")
    steps = blend["samples"] // gbs
    if steps < 1:
        raise ValueError(f"the blend holds {blend['samples']} samples, less than one global batch of {gbs}")
    return steps


def _check_for_model(train: dict, shape) -> None:
    from harness.training.config import TrainConfig, validate_train_for_model

    def refuse(key: str, message: str):
        raise ValueError(f"{key}: {message}")

    validate_train_for_model(TrainConfig(**train), shape.num_layers, refuse,
                             shape.num_attention_heads, shape.num_query_groups, shape.ffn_hidden_size,
                             shape.vocab_size)


@register
class TrainStage(Stage):
    kind = "train"
    version = 2  # validation over eval_samples samples per source, not its whole valid split

    def run(self, ctx: StageContext) -> dict:
        cfg, rt = ctx.spec.config, ctx.spec.runtime
        tok = ctx.manifests["tokenizer"]["result"]
        blend = ctx.manifests["blend"]["result"]
        from harness.training import model as mdl  # torch: imported where a stage runs, not where it is planned

        if "base" in ctx.inputs:  # a continuation: the base's shape and weights
            shape = mdl.ModelShape(**{**ctx.manifests["base"]["result"]["shape"], "seq_length": cfg["seq_length"]})
            start = {"init": str(ctx.inputs["base"] / "checkpoint"), "base": {"hf": str(ctx.inputs["base"] / "hf-base")}}
            if cfg["model"].get("optimizer") == "load":
                start["init_optimizer"] = ctx.manifests["base"]["result"]["optimizer"]
            _check_for_model({**cfg["train"], **rt["train"]}, shape)  # a hub base's shape: unknown at validation
        else:
            shape, start = mdl.shape_from(cfg["model"], tok["vocab_size"], cfg["seq_length"]), {}
        steps = _check_inputs(ctx, shape, blend, cfg["train"]["global_batch_size"])
        spec = {
            "workdir": str(ctx.workdir), "experiment": rt["experiment"], "run_name": rt["run_name"],
            "seed": cfg["seed"], "steps": steps, "model": shape.__dict__, "train": {**cfg["train"], **rt["train"]},
            "blend": {**blend, "cache": str(ctx.inputs["blend"] / "cache"), "tokens": blend["tokens"]},
            "valid": {name[len("valid:"):]: str(ctx.inputs[name] / ctx.manifests[name]["result"]["prefix"])
                      for name in sorted(ctx.inputs) if name.startswith("valid:")},
            "tokenizer": {"path": str(ctx.inputs["tokenizer"] / "tokenizer.json"), **tok},
            "wandb": rt["wandb"], "wandb_config": rt.get("wandb_config", {}), "wandb_id": ctx.spec.digest,
            "peak_flops_per_device": rt["peak_tflops"] * 1e12, **start,
        }
        spec_path = ctx.workdir / "train_spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        n = rt["nproc_per_node"]
        ctx.log.info("training %s: %s parameters, %d steps of %d x %d tokens, %d process(es)", rt["run_name"],
                     f"{shape.parameters():,}", steps, cfg["train"]["global_batch_size"], shape.seq_length, n)
        worker = [sys.executable, "-m", "harness.training.worker", str(spec_path)]
        cmd, env = launch_command(n, worker)
        marker = ctx.workdir / INTERRUPTED
        marker.unlink(missing_ok=True)
        if cmd == worker and in_worker():  # one process in the local executor's warm worker: train right here
            ctx.log.info("training in this process (its output in %s)", ctx.workdir / "train.log")
            rc = _train_here(spec_path, ctx.workdir / "train.log")
        else:
            ctx.log.info("launch: %s", " ".join(cmd))
            rc = _run_forwarding_signals(cmd, ctx.workdir / "train.log", env)
        # The ranks exit 0 after a save on request (srun would kill the others on a non-zero exit); the marker,
        # written once the checkpoint is complete, tells a stop from the end, whatever status the launcher reports.
        if marker.is_file():
            raise StageInterrupted(f"training saved step {marker.read_text().strip()} and stopped on request "
                                   f"(launcher status {rc}); rerun to resume")
        if rc != 0:
            tail = (ctx.workdir / "train.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"training exited with status {rc}:\n" + "\n".join(tail))
        return json.loads((ctx.workdir / "result.json").read_text())


def launch_command(nproc: int, worker: list[str]) -> tuple[list[str], dict]:
    """How the ranks start: one process; torchrun on this node; or, inside a Slurm job of several nodes or tasks,
    srun with one task per rank (the worker reads SLURM_PROCID/SLURM_NTASKS as its rank and world size)."""
    env = dict(os.environ)
    nodes = int(env.get("SLURM_JOB_NUM_NODES", "1")) if "SLURM_JOB_ID" in env else 1
    if "SLURM_JOB_ID" in env and nodes * nproc > 1:
        first = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True,
                               text=True, check=True).stdout.split()[0]
        node = subprocess.run(["scontrol", "show", "node", "-o", first], capture_output=True, text=True).stdout
        addr = next((kv.split("=", 1)[1] for kv in node.split() if kv.startswith("NodeAddr=")), first)
        env.update(HARNESS_RANKS_FROM="slurm", MASTER_ADDR=addr,
                   MASTER_PORT=str(20000 + int(env["SLURM_JOB_ID"]) % 20000))
        cpus = env.get("SLURM_CPUS_PER_TASK")
        return (["srun", f"--nodes={nodes}", f"--ntasks-per-node={nproc}", "--kill-on-bad-exit=1", "--export=ALL"]
                + ([f"--cpus-per-task={cpus}"] if cpus else []) + worker), env
    if nproc == 1:
        return worker, env
    return [worker[0], "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *worker[1:]], env


def _train_here(spec_path, logfile) -> int:
    """The training of one process, in this one: megatron.core, torch and W&B are already imported and started.
    The same exit statuses as the worker process's; its output to train.log."""
    from harness.outputs import output_to
    from harness.training import loop
    from harness.training.checkpoint import CheckpointMismatch

    with output_to(logfile):
        try:
            return loop.main(str(spec_path))
        except (CheckpointMismatch, ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2


def _run_forwarding_signals(cmd: list[str], logfile, env: dict | None = None) -> int:
    """Run the training processes, their output to the terminal and to train.log; SIGTERM/SIGUSR1 sent to this
    stage are passed on, so that they checkpoint and stop."""
    with open(logfile, "a") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                text=True, bufsize=1, env=env, preexec_fn=die_with_parent)
        previous = {}

        def forward(signum, frame):
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                sys.stderr.write(line)
            return proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@register
class ExportStage(Stage):
    kind = "export"

    def run(self, ctx: StageContext) -> dict:
        from harness.training import export

        train_dir = ctx.inputs["train"]
        spec = json.loads((train_dir / "train_spec.json").read_text())
        final = train_dir / ctx.manifests["train"]["result"]["final_checkpoint"]
        out = ctx.workdir / "hf"
        export.export(spec, final, out)
        shutil.copyfile(train_dir / "metrics.jsonl", ctx.workdir / "metrics.jsonl")
        return {"hf": "hf", "checkpoint": str(final), "parameters": spec["model"]}
