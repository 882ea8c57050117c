"""hpc-launch's Slurm side: submitit parameter mapping, preflight checks, the test cluster scripts."""
