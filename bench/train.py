"""Training benchmark: tokens/s of the harness's training against stock megatron.core - its own local layer spec
(its DotProductAttention), DDP, optimizer and forward-backward function in a bare loop fed random tokens already in
memory - on the same shape and batch in the same run. A second line runs the same bare loop on the harness's model
(torch's fused attention in the local spec), so the two ratios separate the model's gain from the loop's cost; then
the harness with one process against two gloo processes.

    python bench/train.py [--steps 60] [--repeat 2] [--smallest]

Each measurement is a fresh process; rates are medians over steady-state logging windows (the first is dropped).
Targets: harness / stock megatron.core >= 1.0 (the fused attention pays for the loop); harness / bare loop on the
same model >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

BARE = r"""
import json, sys, time, statistics, warnings
warnings.filterwarnings("ignore")
import torch

def main():
    spec = json.load(open(sys.argv[1])); steps = int(sys.argv[2])
    import torch.distributed as dist
    dist.init_process_group("gloo", store=dist.FileStore(sys.argv[3], 1), rank=0, world_size=1)
    from megatron.core import parallel_state
    parallel_state.initialize_model_parallel(1, 1)
    from harness.training import cpu_compat, model as mdl   # the CPU device redirection is needed by both
    cpu_compat.apply()
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    torch.manual_seed(1); model_parallel_cuda_manual_seed(1)
    shape = mdl.ModelShape(**spec["model"]); tr = spec["train"]
    if sys.argv[4] == "stock":  # megatron.core's own local spec, unchanged (no fused attention)
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
        mdl.layer_spec = lambda use_te, qk_norm: get_gpt_layer_local_spec(normalization="RMSNorm",
                                                                          qk_layernorm=qk_norm)
    model, config = mdl.build(shape)
    model = DistributedDataParallel(config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=tr["lr"], weight_decay=tr["weight_decay"],
                                                 clip_grad=tr["clip_grad"]), [model])
    config.finalize_model_grads_func = finalize_model_grads
    mbs, gbs, s = tr["micro_batch_size"], tr["global_batch_size"], shape.seq_length
    n_micro = gbs // mbs
    data = torch.randint(0, spec["tokenizer"]["vocab_size"], (steps * gbs, s + 1))
    pos = torch.arange(s).unsqueeze(0).expand(mbs, -1)
    def fwd(it, m):
        b = next(it)
        out = m(b[:, :-1], pos, None, labels=b[:, 1:])
        return out, lambda o: (o.float().mean(), {"lm loss": o.float().mean().detach().clone()})
    fb = get_forward_backward_func()
    rates = []
    for step in range(steps):
        t = time.perf_counter()
        model.zero_grad_buffer(); opt.zero_grad()
        batch = data[step * gbs:(step + 1) * gbs]
        fb(forward_step_func=fwd, data_iterator=iter(batch.split(mbs)), model=[model], num_microbatches=n_micro,
           seq_length=s, micro_batch_size=mbs, forward_only=False)
        opt.step()
        rates.append(gbs * s / (time.perf_counter() - t))
    print(json.dumps({"tokens_per_s": rates}))

if __name__ == "__main__":
    main()
"""


def harness_rate(recipe: Path, store: Path, nproc: int) -> float:
    res = subprocess.run([sys.executable, "-m", "harness", "run", str(recipe), "--store", str(store), "--only", "train",
                          f"profile.nproc_per_node={nproc}"], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(res.stderr[-3000:])
    mfile = next(store.glob("_stages/train/*/metrics.jsonl"))
    rates = [json.loads(l)["tokens_per_s"] for l in mfile.read_text().splitlines() if "tokens_per_s" in l]
    return statistics.median(rates[1:] or rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--smallest", action="store_true", help="6 steps of 8 x 256 tokens, one round: a smoke run (CI)")
    args = ap.parse_args()
    if args.smallest:
        args.steps, args.repeat = 6, 1
    batch = {"micro_batch_size": 4, "global_batch_size": 8} if args.smallest else {}  # two micro-batches still
    log_every = 2 if args.steps < 30 else 5
    quick = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = dict(quick)
        corpus = ROOT / ".cache" / "assets" / "sotu.jsonl"
        if args.smallest:  # a tenth of the addresses: the data stages in seconds
            corpus = tmp / "sotu_small.jsonl"
            lines = (ROOT / ".cache" / "assets" / "sotu.jsonl").read_text().splitlines(keepends=True)
            corpus.write_text("".join(lines[::10]))
        recipe["corpora"] = {"sotu": {"paths": [str(corpus)]}}
        recipe["arms"] = [{"name": "baseline", "mix": {"sotu": 1.0}}]
        recipe["seeds"] = [1]
        recipe["train"] = {**quick.get("train", {}), **batch, "log_interval": log_every, "eval_interval": 10**6,
                           "save_interval": 10**6}
        gbs = recipe["train"]["global_batch_size"]
        recipe["data"] = {**quick["data"], "tokens": args.steps * gbs * 256}
        recipe.pop("synthetic", None)
        recipe["report"] = {"baseline": "baseline"}
        path = tmp / "bench.yaml"
        path.write_text(yaml.safe_dump(recipe))
        rates: dict[str, list[float]] = {"harness, 1 process": [], "stock megatron.core": [],
                                         "bare loop, harness's model": [], "harness, 2 processes": []}
        for r in range(args.repeat):
            store = tmp / f"store{r}"
            rates["harness, 1 process"].append(harness_rate(path, store, 1))
            spec = next(store.glob("_stages/train/*/train_spec.json"))
            for name, model in (("stock megatron.core", "stock"), ("bare loop, harness's model", "harness")):
                res = subprocess.run([sys.executable, "-c", BARE, str(spec), str(args.steps), str(tmp / f"pg{r}{model}"),
                                      model], capture_output=True, text=True, cwd=ROOT)
                if res.returncode != 0:
                    sys.exit(res.stderr[-3000:])
                bare = json.loads(res.stdout.strip().splitlines()[-1])["tokens_per_s"]
                rates[name].append(statistics.median(bare[min(5, len(bare) // 2):]))
            # the same data stages for two processes: the store copied without its training
            shutil.copytree(store, tmp / f"store2p{r}", ignore=lambda d, names: ["train"] * (Path(d).name == "_stages"))
            rates["harness, 2 processes"].append(harness_rate(path, tmp / f"store2p{r}", 2))
        best = {k: max(v) for k, v in rates.items()}
        shape = json.loads(spec.read_text())["model"]
        print(f"model: {shape['num_layers']} layers, hidden {shape['hidden_size']}, seq {shape['seq_length']}, "
              f"vocab {shape['vocab_size']}; {args.steps} steps of {gbs} x {shape['seq_length']} tokens")
        for k, v in best.items():
            print(f"  {k:<28} {v:9,.0f} tokens/s")
        h, same = best["harness, 1 process"], best["bare loop, harness's model"]
        print(f"ratio harness / stock megatron.core           {h / best['stock megatron.core']:.3f}  (target >= 1.0)")
        print(f"ratio harness / bare loop on the same model   {h / same:.3f}  (target >= 0.95)")
        print(f"ratio 2 processes / 1 process                 {best['harness, 2 processes'] / best['harness, 1 process']:.3f}")


if __name__ == "__main__":
    main()
