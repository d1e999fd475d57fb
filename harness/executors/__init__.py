"""Executors run a plan's stages: `local` on this machine, `slurm` as sbatch jobs; both call harness.runner."""
