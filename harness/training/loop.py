"""The pretraining loop on megatron.core: its forward-backward schedule, its DDP, its optimizer and LR scheduler.

One process per rank (torchrun or srun set RANK/WORLD_SIZE; a lone process uses a file store). Data comes from the
arm's blend, built from the blend stage's cached indices, so that sample i is the same sample in every run and
after every resume: step t of a run reads global samples [t*gbs, (t+1)*gbs), each data-parallel rank its slice.
SIGTERM or SIGUSR1 makes every rank agree (all-reduce) to stop after the current step, save, and exit with
EXIT_REQUEUE, which executors read as "requeue me".
"""

from __future__ import annotations

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

from harness.stages import EXIT_REQUEUE
from harness.training import checkpoint as ckpt
from harness.training import model as mdl


class Interrupt:
    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        flag = torch.tensor([1.0 if self.requested else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def init_distributed(workdir: Path, on_cpu: bool) -> tuple[int, int]:
    backend = "gloo" if on_cpu else "nccl"
    if "RANK" in os.environ:  # torchrun / srun with rendezvous variables
        if not on_cpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    else:
        store_path = workdir / ".pg-store"
        store_path.unlink(missing_ok=True)
        dist.init_process_group(backend, store=dist.FileStore(str(store_path), 1), rank=0, world_size=1)
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(1, 1)
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
        self.rank, self.world = init_distributed(self.workdir, self.on_cpu)
        self.device = torch.device("cpu") if self.on_cpu else torch.device("cuda", torch.cuda.current_device())
        tr = spec["train"]
        self.gbs, self.mbs = tr["global_batch_size"], tr["micro_batch_size"]
        if self.gbs % (self.mbs * self.world):
            raise ValueError(f"train.global_batch_size {self.gbs} is not a multiple of micro_batch_size {self.mbs} "
                             f"x {self.world} data-parallel processes")
        self.n_micro = self.gbs // (self.mbs * self.world)
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
        model, config = mdl.build(self.shape, tr["precision"], self.on_cpu)
        if not self.on_cpu:
            model.cuda(torch.cuda.current_device())
        distopt = bool(tr.get("distributed_optimizer")) and self.world > 1
        self.model = DistributedDataParallel(
            config, DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                  use_distributed_optimizer=distopt), model)
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=tr["lr"], min_lr=tr["min_lr"], weight_decay=tr["weight_decay"],
                            adam_beta1=tr["adam_beta1"], adam_beta2=tr["adam_beta2"], adam_eps=1e-8,
                            clip_grad=tr["clip_grad"], bf16=tr["precision"] == "bf16",
                            params_dtype=torch.bfloat16 if tr["precision"] == "bf16" else torch.float32,
                            use_distributed_optimizer=distopt), [self.model])
        # What Megatron-LM's training loop wires into the schedule: without finalize_model_grads the data-parallel
        # gradient all-reduce never happens and every rank trains on its own gradients.
        from megatron.core.distributed import finalize_model_grads

        config.finalize_model_grads_func = finalize_model_grads
        config.no_sync_func = self.model.no_sync
        config.grad_scale_func = self.optimizer.scale_loss
        self.steps = spec["steps"]
        warmup = int(round(tr["warmup_fraction"] * self.steps))
        style = {"cosine": "cosine", "wsd": "WSD", "constant": "constant", "linear": "linear"}[tr["schedule"]]
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=tr["lr"], min_lr=tr["min_lr"], lr_warmup_steps=warmup,
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
        per_rank = self.gbs // self.world
        start = step * self.gbs + self.rank * per_rank
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
        loss = torch.stack([x["lm loss"] for x in losses]).mean().reshape(1)
        dist.all_reduce(loss)
        return {"loss": float(loss.item() / self.world), "grad_norm": float(grad_norm or 0.0),
                "lr": float(self.optimizer.param_groups[0]["lr"]), "skipped": not ok}

    @torch.no_grad()
    def evaluate(self) -> dict:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.model.eval()
        out = {}
        for name, ds in self.valid.items():
            idx = list(range(self.rank, len(ds), self.world))
            total, count = torch.zeros(1), torch.zeros(1)
            for i in range(0, len(idx), self.mbs):
                chunk = idx[i:i + self.mbs]
                batch = _to_device(_collate([ds[j] for j in chunk]), self.device)
                losses = get_forward_backward_func()(
                    forward_step_func=_forward_step, data_iterator=iter([batch]), model=[self.model],
                    num_microbatches=1, seq_length=self.shape.seq_length, micro_batch_size=len(chunk),
                    forward_only=True)
                total += float(losses[0]["lm loss"]) * len(chunk)
                count += len(chunk)
            dist.all_reduce(total)
            dist.all_reduce(count)
            out[f"valid/{name}"] = float(total.item() / max(1.0, count.item()))
        self.model.train()
        return out

    def identity(self) -> dict:
        """What a checkpoint must agree with to be resumed by this run."""
        return {"model": self.spec["model"], "train": {k: v for k, v in self.spec["train"].items()
                                                       if k not in ("save_interval", "keep_last", "log_interval",
                                                                    "eval_interval")},
                "blend": {k: v for k, v in self.spec["blend"].items() if k != "cache"}, "seed": self.spec["seed"],
                "steps": self.steps}

    def _log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.wandb is not None:
                self.wandb.log(record, step=record["step"])

    # ---------------------------------------------------------------------------------------------- run
    def run(self) -> int:
        tr = self.spec["train"]
        ckpt_root = self.workdir / "checkpoints"
        start = 0
        tokens_by_source = np.zeros(len(self.source_names), dtype=np.int64)
        last = ckpt.latest(ckpt_root)
        if last is not None:
            ckpt.check_identity(last, self.identity())
            common = ckpt.load(last, self.model, self.optimizer, self.scheduler)
            start = common["step"]
            tokens_by_source = np.asarray(common["extra"]["tokens_by_source"], dtype=np.int64)
            self._say(f"resumed from {last} at step {start}")
            if self.rank == 0 and self.log_path.exists():  # drop records past the checkpoint (a lost tail)
                kept = [l for l in self.log_path.read_text().splitlines() if json.loads(l)["step"] <= start]
                self.log_path.write_text("".join(l + "\n" for l in kept))
        self.wandb = self._init_wandb() if self.rank == 0 else None
        interrupt = Interrupt()
        seq = self.shape.seq_length
        t_window, tokens_window = time.perf_counter(), 0
        for step in range(start, self.steps):
            rec = self.train_step(step)
            ids = self.sample_source[step * self.gbs:(step + 1) * self.gbs]
            tokens_by_source += np.bincount(ids, minlength=len(self.source_names)) * seq
            tokens_window += self.gbs * seq
            done = step + 1
            rec.update(step=done, tokens=int(done * self.gbs * seq),
                       **{f"tokens/{n}": int(tokens_by_source[i]) for i, n in enumerate(self.source_names)})
            if done % tr["log_interval"] == 0 or done == self.steps:
                dt = time.perf_counter() - t_window
                rec["tokens_per_s"] = tokens_window / dt
                if not self.on_cpu:
                    rec["mfu"] = (rec["tokens_per_s"] * self.shape.flops_per_token()
                                  / (self.world * self.spec["peak_flops_per_device"]))
                t_window, tokens_window = time.perf_counter(), 0
                self._say(f"step {done}/{self.steps} loss {rec['loss']:.4f} lr {rec['lr']:.2e} "
                          f"grad-norm {rec['grad_norm']:.3f} {rec['tokens_per_s']:,.0f} tokens/s")
            if done % tr["eval_interval"] == 0 or done == self.steps:
                rec.update(self.evaluate())
            self._log(rec)
            stop = interrupt.agreed()
            if done % tr["save_interval"] == 0 or done == self.steps or stop:
                ckpt.save(ckpt_root, done, self.model, self.optimizer, self.scheduler, self.identity(),
                          {"tokens_by_source": tokens_by_source.tolist()}, tr["keep_last"])
            if stop and done < self.steps:
                self._say(f"interrupted: saved step {done}; rerun to resume")
                return EXIT_REQUEUE
        nodes: list = [None] * self.world  # where the ranks ran (Slurm's node names under srun)
        dist.all_gather_object(nodes, os.environ.get("SLURMD_NODENAME") or socket.gethostname())
        if self.rank == 0:
            final = ckpt.latest(ckpt_root)
            result = {"steps": self.steps, "final_checkpoint": str(final.relative_to(self.workdir)),
                      "tokens": int(self.steps * self.gbs * seq),
                      "tokens_by_source": {n: int(tokens_by_source[i]) for i, n in enumerate(self.source_names)},
                      "parameters": self.shape.parameters(), "world_size": self.world,
                      "nodes": sorted(set(nodes))}
            last_rec = [json.loads(l) for l in self.log_path.read_text().splitlines()][-1]
            result.update({k: v for k, v in last_rec.items() if k == "loss" or k.startswith("valid/")})
            (self.workdir / "result.json").write_text(json.dumps(result, indent=2))
            if self.wandb is not None:
                self.wandb.summary.update(result)
                self.wandb.finish()
        return 0

    def _init_wandb(self):
        w = self.spec.get("wandb") or {}
        if w.get("mode", "disabled") == "disabled":
            return None
        import wandb

        return wandb.init(project=w.get("project", "task-seeded"), group=self.spec["experiment"],
                          name=self.spec["run_name"], job_type="train", mode=w["mode"], dir=str(self.workdir),
                          config={"model": self.spec["model"], "train": self.spec["train"],
                                  "blend": {k: v for k, v in self.spec["blend"].items() if k != "cache"}},
                          reinit="finish_previous")

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
