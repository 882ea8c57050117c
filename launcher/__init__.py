"""hpc-launch's launcher: the `launch` Hydra app that composes a config once and runs it locally or on Slurm."""
