"""The pretraining loop on megatron.core: its forward-backward schedule, its DDP, its optimizer and LR scheduler.

One process per rank (torchrun or srun set RANK/WORLD_SIZE; a lone process uses a file store). Data comes from the
arm's blend, built from the blend stage's cached indices, so that sample i is the same sample in every run and
after every resume: step t of a run reads global samples [t*gbs, (t+1)*gbs), each data-parallel rank its slice.
SIGTERM or SIGUSR1 makes every rank agree (all-reduce) to stop after the current step and save; rank 0 then writes
the INTERRUPTED marker and every rank exits 0 - a non-zero exit would make `srun --kill-on-bad-exit` kill the other
ranks mid-exit and report their signal instead - and the train stage reads the marker as "requeue me".

Every collective the loop issues itself goes through harness.training.collectives, on the training device.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from harness import progress, tracking
from harness.stages import INTERRUPTED
from harness.training import checkpoint as ckpt
from harness.training import collectives as coll
from harness.training import model as mdl
from harness.training.config import RUNTIME_KEYS


class Interrupt:
    def __init__(self):
        self.requested = False
        self.previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def close(self) -> None:  # a process that goes on after training (the warm worker) gets its handlers back
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        self.requested = True

    def agreed(self, device: torch.device) -> bool:
        return coll.any_rank(self.requested, device)


def local_device_index(local_rank: int, visible: int) -> int:
    """The GPU of a rank among those its process sees: the local rank when every task sees the node's GPUs
    (torchrun, srun's default), modulo the count when Slurm gives each task its own (--gpus-per-task=1,
    --gpu-bind=single:1: every rank sees one device, index 0)."""
    if visible < 1:
        raise RuntimeError("CUDA is available but no device is visible to this rank (CUDA_VISIBLE_DEVICES)")
    return local_rank % visible


def init_distributed(workdir: Path, on_cpu: bool, tensor_parallel: int = 1) -> tuple[int, int]:
    backend = "gloo" if on_cpu else "nccl"
    if "RANK" in os.environ:  # torchrun / srun with rendezvous variables
        if not on_cpu:
            torch.cuda.set_device(local_device_index(int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()))
        dist.init_process_group(backend)
    else:
        store_path = workdir / ".pg-store"
        store_path.unlink(missing_ok=True)
        dist.init_process_group(backend, store=dist.FileStore(str(store_path), 1), rank=0, world_size=1)
    from megatron.core import parallel_state

    if dist.get_world_size() % tensor_parallel:
        raise ValueError(f"train.tensor_parallel {tensor_parallel} does not divide the {dist.get_world_size()} "
                         f"training processes")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel)
    return dist.get_rank(), dist.get_world_size()


def _collate(samples: list[dict]) -> dict:
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in ("tokens", "labels", "loss_mask",
                                                                                  "position_ids")}


def _loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
    losses = output.float()
    mask = loss_mask.float()
    loss = torch.sum(losses.view(-1) * mask.view(-1)) / mask.sum().clamp(min=1)
    return loss, {"lm loss": loss.detach().clone()}  # a copy: the schedule divides `loss` in place


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, lambda out: _loss_func(batch["loss_mask"], out)


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Trainer:
    def __init__(self, spec: dict):
        self.spec = spec
        self.workdir = Path(spec["workdir"])
        self.on_cpu = not torch.cuda.is_available()
        tr = spec["train"]
        if self.on_cpu and tr.get("precision") == "bf16":
            raise ValueError("train.precision bf16 needs GPUs (megatron's mixed-precision optimizer keeps CUDA "
                             "buffers); use fp32 on a CPU")
        self.tp = int(tr.get("tensor_parallel", 1))
        self.rank, self.world = init_distributed(self.workdir, self.on_cpu, self.tp)
        from megatron.core import parallel_state

        # the data are split over data-parallel ranks; the tensor-parallel ranks of one replica read the same batch
        self.dp, self.dp_rank = self.world // self.tp, parallel_state.get_data_parallel_rank()
        self.device = torch.device("cpu") if self.on_cpu else torch.device("cuda", torch.cuda.current_device())
        self.gbs, self.mbs = tr["global_batch_size"], tr["micro_batch_size"]
        if self.gbs % (self.mbs * self.dp):
            raise ValueError(f"train.global_batch_size {self.gbs} is not a multiple of micro_batch_size {self.mbs} "
                             f"x {self.dp} data-parallel processes")
        self.n_micro = self.gbs // (self.mbs * self.dp)
        # the distributed optimizer shards its state over data-parallel ranks: with one rank there is nothing to shard
        self.distopt = bool(tr.get("distributed_optimizer")) and self.dp > 1
        if self.on_cpu:
            from harness.training import cpu_compat

            cpu_compat.apply()
        self.log_path = self.workdir / "metrics.jsonl"
        self.wandb = None

    # ---------------------------------------------------------------------------------------------- setup
    def build(self) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        spec, tr = self.spec, self.spec["train"]
        seed = spec["seed"]
        torch.manual_seed(seed)
        np.random.seed(seed)
        model_parallel_cuda_manual_seed(seed)
        self.shape = mdl.ModelShape(**spec["model"])
        model, config = mdl.build(self.shape, tr["precision"], self.on_cpu, recompute=tr.get("recompute", "none"),
                                  recompute_num_layers=tr.get("recompute_num_layers", 1), tensor_parallel=self.tp)
        if not self.on_cpu:
            model.cuda(torch.cuda.current_device())
        overlap_gather = bool(tr.get("overlap_param_gather")) and self.distopt
        self.model = DistributedDataParallel(
            config, DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                                  overlap_grad_reduce=bool(tr.get("overlap_grad_reduce")),
                                                  overlap_param_gather=overlap_gather,
                                                  use_distributed_optimizer=self.distopt), model)
        min_lr = 0.0 if tr["schedule"] == "anneal" else tr["min_lr"]  # an anneal decays to zero
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=tr["lr"], min_lr=min_lr, weight_decay=tr["weight_decay"],
                            adam_beta1=tr["adam_beta1"], adam_beta2=tr["adam_beta2"], adam_eps=1e-8,
                            clip_grad=tr["clip_grad"], bf16=tr["precision"] == "bf16",
                            params_dtype=torch.bfloat16 if tr["precision"] == "bf16" else torch.float32,
                            use_distributed_optimizer=self.distopt), [self.model])
        # What Megatron-LM's training loop wires into the schedule: without finalize_model_grads the data-parallel
        # gradient all-reduce never happens and every rank trains on its own gradients.
        from megatron.core.distributed import finalize_model_grads

        config.finalize_model_grads_func = finalize_model_grads
        config.no_sync_func = self.model.no_sync
        config.grad_scale_func = self.optimizer.scale_loss
        self.steps = spec["steps"]
        warmup = int(round(tr["warmup_fraction"] * self.steps))
        style = {"cosine": "cosine", "wsd": "WSD", "constant": "constant", "linear": "linear",
                 "anneal": "linear"}[tr["schedule"]]
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=tr["lr"], min_lr=min_lr, lr_warmup_steps=warmup,
            lr_decay_steps=self.steps, lr_decay_style=style, start_wd=tr["weight_decay"],
            end_wd=tr["weight_decay"], wd_incr_steps=self.steps, wd_incr_style="constant",
            wsd_decay_steps=max(1, int(round(tr["wsd_decay_fraction"] * self.steps))) if style == "WSD" else None,
            lr_wsd_decay_style="linear" if style == "WSD" else None)
        self._build_data()

    def _build_data(self) -> None:
        from harness.data import blend as bl
        from harness.data.tokenizer import MegatronTokenizer

        spec, b = self.spec, self.spec["blend"]
        tok = MegatronTokenizer(spec["tokenizer"]["path"], spec["tokenizer"]["eod_id"], spec["tokenizer"]["vocab_size"])
        plans = [bl.SourcePlan(s["name"], s["prefix"], s["share"], s["target_tokens"], s["available_tokens"],
                               s["epochs"]) for s in b["sources"]]
        self.source_names = [p.name for p in plans]
        self.train_ds, _ = bl.build(plans, b["tokens"], b["seq_length"], b["split"], b["seed"], b["cache"], tok)
        self.sample_source = (np.asarray(self.train_ds.dataset_index) if len(plans) > 1
                              else np.zeros(len(self.train_ds), dtype=np.int16))
        if self.steps * self.gbs > len(self.train_ds):
            raise ValueError(f"{self.steps} steps of {self.gbs} samples need {self.steps * self.gbs} samples; "
                             f"the blend holds {len(self.train_ds)}")
        self.valid = {}
        for name, prefix in spec["valid"].items():
            ds = bl.build_valid(prefix, spec["train"]["eval_samples"], b["seq_length"], b["split"], spec["seed"],
                                str(self.workdir / "valid-cache"), tok)
            if ds is not None:
                self.valid[name] = ds

    # ---------------------------------------------------------------------------------------------- steps
    def _micro_batches(self, step: int) -> list[dict]:
        per_rank = self.gbs // self.dp
        start = step * self.gbs + self.dp_rank * per_rank
        return [_to_device(_collate([self.train_ds[start + m * self.mbs + i] for i in range(self.mbs)]), self.device)
                for m in range(self.n_micro)]

    def train_step(self, step: int) -> dict:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        losses = get_forward_backward_func()(
            forward_step_func=_forward_step, data_iterator=iter(self._micro_batches(step)), model=[self.model],
            num_microbatches=self.n_micro, seq_length=self.shape.seq_length, micro_batch_size=self.mbs,
            forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        loss = coll.mean_all(torch.stack([x["lm loss"] for x in losses]).mean())
        return {"loss": loss, "grad_norm": float(grad_norm or 0.0),
                "lr": float(self.optimizer.param_groups[0]["lr"]), "skipped": not ok}

    @contextlib.contextmanager
    def _synced_params(self):
        """With overlap_param_gather the parameters are all-gathered lazily by the next forward's hooks; before
        validation or a checkpoint they must be whole (what Megatron-LM does around both)."""
        hooked = self.model.use_forward_hook
        if hooked:
            self.model.disable_forward_pre_hook(param_sync=True)
        try:
            yield
        finally:
            if hooked:
                self.model.enable_forward_pre_hook()

    @torch.no_grad()
    def evaluate(self) -> dict:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.model.eval()
        out = {}
        with self._synced_params():
            for name, ds in self.valid.items():
                idx = list(range(self.dp_rank, len(ds), self.dp))
                total, count = 0.0, 0
                for i in range(0, len(idx), self.mbs):
                    chunk = idx[i:i + self.mbs]
                    batch = _to_device(_collate([ds[j] for j in chunk]), self.device)
                    losses = get_forward_backward_func()(
                        forward_step_func=_forward_step, data_iterator=iter([batch]), model=[self.model],
                        num_microbatches=1, seq_length=self.shape.seq_length, micro_batch_size=len(chunk),
                        forward_only=True)
                    total += float(losses[0]["lm loss"]) * len(chunk)
                    count += len(chunk)
                # summed over every rank: each tensor-parallel rank of a replica adds the same sums, the ratio is
                # unchanged
                total, count = coll.sum_all([total, count], self.device)
                out[f"valid/{name}"] = total / max(1.0, count)
        self.model.train()
        return out

    def identity(self) -> dict:
        """What a checkpoint must agree with to be resumed by this run. The distributed optimizer's checkpoints
        (dp_reshardable) hold one shard per data-parallel rank: they resume only at the same data-parallel size."""
        ident = {"model": self.spec["model"], "init": self.spec.get("init"), "train": {k: v for k, v in self.spec["train"].items()
                                                        if k not in RUNTIME_KEYS and k != "eval_interval"},
                 "blend": {k: v for k, v in self.spec["blend"].items() if k != "cache"}, "seed": self.spec["seed"],
                 "steps": self.steps}
        if self.distopt:
            ident["data_parallel_size"] = self.dp
        return ident

    def _load_base(self, path: Path) -> None:
        """A continuation arm starts from its base's weights (a model-only checkpoint of the base stage) with a
        fresh optimizer; the optimizer's own copies of the parameters (bf16's fp32 main weights, the distributed
        optimizer's shards) are refreshed from the loaded model, as Megatron-LM does when it loads no optimizer."""
        from megatron.core import dist_checkpointing

        if self.spec.get("init_optimizer") is not None:
            return self._load_base_with_optimizer(path, self.spec["init_optimizer"])
        state = dist_checkpointing.load({"model": self.model.module.sharded_state_dict()}, str(path))
        self.model.module.load_state_dict(state["model"])
        self.optimizer.reload_model_params()
        self._say(f"continuing from the base's weights in {path}")

    def _load_base_with_optimizer(self, path: Path, saved: dict) -> None:
        """A megatron base's Adam moments and steps as well (base.optimizer: load). Its learning-rate settings are
        not taken: the param groups keep this run's (megatron's scheduler reads max_lr/min_lr from them), and the
        schedule starts afresh."""
        shards = saved.get("data_parallel_size")  # None: saved without the distributed optimizer
        if (shards is not None) != self.distopt or (self.distopt and shards != self.dp):
            raise ValueError(
                f"base.optimizer load: the base's optimizer state was saved "
                f"{f'by the distributed optimizer in {shards} data-parallel shards' if shards else 'whole'}, and "
                f"this run {'shards it over ' + str(self.dp) if self.distopt else 'keeps it whole'}: train with the "
                f"base's train.distributed_optimizer and number of training processes, or base.optimizer: fresh")
        ours = [{k: v for k, v in g.items() if k not in ("params", "step")} for g in self.optimizer.param_groups]
        common = self.checkpoints.load_weights_and_optimizer(path, self.model, self.optimizer)
        for group, mine in zip(self.optimizer.param_groups, ours):
            group.update(mine)
        self.scheduler.step(increment=0)  # this run's learning rate at step 0, into every param group
        self._say(f"continuing from the base's weights and optimizer state (its step {common['step']}) in {path}")

    def _log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.wandb is not None:
                self.wandb.log(record, step=record["step"])

    def _save(self, root: Path, step: int, tokens_by_source: np.ndarray) -> None:
        with self._synced_params():
            self.checkpoints.save(root, step, self.model, self.optimizer, self.scheduler, self.identity(),
                                  {"tokens_by_source": tokens_by_source.tolist()})

    # ---------------------------------------------------------------------------------------------- run
    def run(self) -> int:
        tr = self.spec["train"]
        ckpt_root = self.workdir / "checkpoints"
        self.checkpoints = ckpt.Checkpointer(distributed_optimizer=self.distopt, keep_last=tr["keep_last"],
                                             asynchronous=bool(tr.get("async_save")))
        start = 0
        tokens_by_source = np.zeros(len(self.source_names), dtype=np.int64)
        last = ckpt.latest(ckpt_root)
        if last is not None:
            ckpt.check_identity(last, self.identity())
            common = self.checkpoints.load(last, self.model, self.optimizer, self.scheduler)
            start = common["step"]
            tokens_by_source = np.asarray(common["extra"]["tokens_by_source"], dtype=np.int64)
            self._say(f"resumed from {last} at step {start}")
            if self.rank == 0 and self.log_path.exists():  # drop records past the checkpoint (a lost tail)
                kept = [l for l in self.log_path.read_text().splitlines() if json.loads(l)["step"] <= start]
                self.log_path.write_text("".join(l + "\n" for l in kept))
        elif self.spec.get("init"):
            self._load_base(Path(self.spec["init"]))
        self.wandb = self._init_wandb() if self.rank == 0 else None
        interrupt = Interrupt()
        seq = self.shape.seq_length
        flops_per_token = self.shape.flops_per_token()
        step_seconds, tokens_window = 0.0, 0  # training steps only: validation and checkpoints are not throughput
        run_seconds = 0.0  # the same since this process started, for the console
        try:
            for step in range(start, self.steps):
                t_step = time.perf_counter()
                rec = self.train_step(step)  # its loss is read on the host: the step's device work is done
                step_seconds += time.perf_counter() - t_step
                run_seconds += time.perf_counter() - t_step
                ids = self.sample_source[step * self.gbs:(step + 1) * self.gbs]
                tokens_by_source += np.bincount(ids, minlength=len(self.source_names)) * seq
                tokens_window += self.gbs * seq
                done = step + 1
                rec.update(step=done, tokens=int(done * self.gbs * seq),
                           **{f"tokens/{n}": int(tokens_by_source[i]) for i, n in enumerate(self.source_names)})
                if done % tr["log_interval"] == 0 or done == self.steps:
                    rec["tokens_per_s"] = tokens_window / step_seconds
                    if not self.on_cpu:
                        rec["mfu"] = (rec["tokens_per_s"] * flops_per_token
                                      / (self.world * self.spec["peak_flops_per_device"]))
                    step_seconds, tokens_window = 0.0, 0
                    self._say(f"step {done}/{self.steps} loss {rec['loss']:.4f} lr {rec['lr']:.2e} "
                              f"grad-norm {rec['grad_norm']:.3f} {rec['tokens_per_s']:,.0f} tokens/s"
                              + (f" MFU {rec['mfu']:.1%}" if "mfu" in rec else ""))
                if done % tr["eval_interval"] == 0 or done == self.steps:
                    rec.update(self.evaluate())
                self._log(rec)
                if self.rank == 0:
                    progress.report("step", done, self.steps, rate=(done - start) * self.gbs * seq / run_seconds,
                                    unit="tokens", text=f"loss {rec['loss']:.3f}")
                stop = interrupt.agreed(self.device)
                if done % tr["save_interval"] == 0 or done == self.steps or stop:
                    self._save(ckpt_root, done, tokens_by_source)
                self.checkpoints.poll()  # publishes finished background saves
                if stop and done < self.steps:
                    self.checkpoints.wait()
                    if self.rank == 0:
                        (self.workdir / INTERRUPTED).write_text(str(done))
                    self._say(f"interrupted: saved step {done}; rerun to resume")
                    return 0
            self.checkpoints.wait()
        finally:
            self.checkpoints.close()
            interrupt.close()
        nodes: list = [None] * self.world  # where the ranks ran (Slurm's node names under srun)
        dist.all_gather_object(nodes, os.environ.get("SLURMD_NODENAME") or socket.gethostname())
        if self.rank == 0:
            final = ckpt.latest(ckpt_root)
            result = {"steps": self.steps, "final_checkpoint": str(final.relative_to(self.workdir)),
                      "tokens": int(self.steps * self.gbs * seq),
                      "tokens_by_source": {n: int(tokens_by_source[i]) for i, n in enumerate(self.source_names)},
                      "parameters": self.shape.parameters(), "world_size": self.world,
                      "tensor_parallel": self.tp,
                      "flops_per_token": flops_per_token, "nodes": sorted(set(nodes))}
            last_rec = [json.loads(l) for l in self.log_path.read_text().splitlines()][-1]
            result.update({k: v for k, v in last_rec.items() if k == "loss" or k.startswith("valid/")})
            if self.wandb is not None:
                result["wandb"] = tracking.describe(self.wandb, self.workdir)
            (self.workdir / "result.json").write_text(json.dumps(result, indent=2))
            if self.wandb is not None:
                self.wandb.summary.update(result)
                self.wandb.finish()
        return 0

    def _init_wandb(self):
        blend = {k: v for k, v in self.spec["blend"].items() if k not in ("cache", "sources")}  # no lists: W&B
        # cannot filter inside one; the sources' shares are the flat `share.<source>` keys of wandb_config
        return tracking.init_run(self.spec.get("wandb"), self.workdir, group=self.spec["experiment"],
                                 name=self.spec["run_name"], job_type="train", run_id=self.spec.get("wandb_id"),
                                 config={**self.spec.get("wandb_config", {}), "parameters": self.shape.parameters(),
                                         "shape": self.spec["model"], "train": self.spec["train"], "blend": blend,
                                         "world_size": self.world},
                                 say=self._say)

    def _say(self, msg: str) -> None:
        if self.rank == 0:
            print(msg, file=sys.stderr, flush=True)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    trainer = Trainer(spec)
    try:
        trainer.build()
        return trainer.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
