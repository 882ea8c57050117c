"""The `launch` Hydra app: compose a config once, validate it, run it locally or on Slurm."""
