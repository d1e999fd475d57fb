"""A training rank: `python -m harness.training.worker SPEC.json` (one process, or one per rank under torchrun/srun)."""

import sys

if __name__ == "__main__":  # the guard matters: dist_checkpointing spawns worker processes
    import os
    import warnings

    if os.environ.get("HARNESS_RANKS_FROM") == "slurm":  # srun: one task per rank
        os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                          LOCAL_RANK=os.environ["SLURM_LOCALID"])

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from harness.training.checkpoint import CheckpointMismatch
    from harness.training.loop import main

    try:
        sys.exit(main(sys.argv[1]))
    except (CheckpointMismatch, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
