"""The launcher's config schemas: plain dataclasses, the single source of defaults, registered with Hydra.

Each dataclass is the schema of one config group (`trainer`, `callbacks`, `logger`, `cluster`) or of the top
level. Hydra type-checks overrides against them; `launcher.validate` converts the composed config back into
them and checks what spans several fields. `model` and `data` are free-form: their keys are the arguments of
the user's `_target_` class, checked against its signature once the class is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The `cluster` group's schema is the Slurm side's own (one source of truth for its fields and defaults).
from slurm.params import SlurmConfig as SlurmConfig


@dataclass
class TrainerConfig:
    """The `trainer_core.Trainer` arguments a config may set (Lightning's names and meanings)."""

    accelerator: str = "auto"  # "cpu", "gpu" (alias "cuda") or "auto" (GPUs when present, else CPU)
    devices: int = 1  # ranks per node; each rank drives one device (one CPU process or one GPU)
    num_nodes: int = 1  # nodes of the job; more than one needs a cluster (+cluster=slurm)
    strategy: str = "auto"  # "auto", "ddp" or "single_device"; auto picks DDP when world size > 1
    precision: str = "32-true"  # "32-true", "16-mixed" (GPU only) or "bf16-mixed"
    max_epochs: int | None = 5  # the built-in example converges in 5; None means Lightning's 1000
    max_steps: int = -1  # -1: no limit on optimizer steps
    accumulate_grad_batches: int = 1  # batches whose gradients add up before one optimizer step
    gradient_clip_val: float | None = None  # None: no clipping
    gradient_clip_algorithm: str = "norm"  # "norm" or "value"
    limit_train_batches: Any = 1.0  # float: fraction of the loader; int: number of batches
    limit_val_batches: Any = 1.0  # as limit_train_batches
    limit_test_batches: Any = 1.0  # as limit_train_batches
    limit_predict_batches: Any = 1.0  # as limit_train_batches
    val_check_interval: Any = 1.0  # float: fraction of an epoch; int: every that many training batches
    check_val_every_n_epoch: int | None = 1  # None: validate only by val_check_interval
    num_sanity_val_steps: int = 2  # validation batches run before training starts
    fast_dev_run: Any = False  # True or an int: run that many batches of each stage, no checkpoints
    overfit_batches: Any = 0.0  # float fraction or int count of training batches reused every epoch
    deterministic: bool = False  # use deterministic algorithms (bit-for-bit reproducible on CPU)
    benchmark: bool | None = None  # cudnn.benchmark; None leaves torch's default
    detect_anomaly: bool = False  # torch.autograd anomaly detection (slow; for debugging)
    enable_checkpointing: bool = True  # False: no ModelCheckpoint, nothing to resume from
    enable_progress_bar: bool = True  # rank-zero progress bar on the console
    enable_model_summary: bool = True  # a parameter table at the start of fit
    log_every_n_steps: int = 50  # how often step-level metrics reach the logger
    use_distributed_sampler: bool = True  # inject a DistributedSampler into training loaders
    profiler: str | None = None  # None or "simple"


@dataclass
class CheckpointConfig:
    """How `ModelCheckpoint` keeps checkpoints in `<run dir>/checkpoints/`."""

    monitor: str | None = None  # metric that ranks checkpoints; None keeps the newest
    mode: str = "min"  # "min" or "max": which direction of `monitor` is better
    save_top_k: int = 1  # best checkpoints kept besides last.ckpt; -1 keeps all
    filename: str | None = (
        None  # template such as "{epoch}-{val_loss:.3f}"; None: "epoch={epoch}-step={step}"
    )
    every_n_epochs: int | None = None  # None: once per epoch (Lightning's default)
    every_n_train_steps: int | None = None  # also save every that many optimizer steps


@dataclass
class EarlyStoppingConfig:
    """`EarlyStopping`, off unless `enabled`."""

    enabled: bool = False  # add an EarlyStopping callback
    monitor: str = "val_loss"  # metric to watch
    mode: str = "min"  # "min" or "max"
    patience: int = 3  # validation runs without improvement before stopping
    min_delta: float = 0.0  # smallest change that counts as an improvement


@dataclass
class CallbacksConfig:
    """The built-in callbacks every rank adds to its Trainer."""

    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    lr_monitor: bool = False  # log learning rates each step (LearningRateMonitor)
    device_stats: bool = False  # log CPU/GPU utilisation and memory (DeviceStatsMonitor)


@dataclass
class LoggerConfig:
    """Where metrics go; events land in `<run dir>/<kind dir>/` so a resumed run continues them."""

    kind: str = "tensorboard"  # "tensorboard" (events in tb/), "csv" (metrics.csv in csv/) or "none"


@dataclass
class RunConfig:
    """Where the run directory `<root>/<experiment>/<id>/` lies."""

    id: str | None = None  # None: a new id at compose time; an existing id resumes that run
    root: str = "runs"  # parent of all run directories (and of the example's generated data)
    experiment: str = "default"  # groups runs; experiment overlays set it to their name
    # Resume even when the checkpoint was trained under other model, data, seed or optimisation settings
    # (by default such a resume is refused, naming the keys that differ).
    allow_config_change: bool = False
    # "auto": an existing run resumes from its newest intact checkpoint. "never": this launch moves the run's
    # checkpoints and metric logs to set-aside-<time>/ (nothing is deleted) and trains from step 0 in the
    # same directory; it is not stored, so the next launch resumes again.
    resume: str = "auto"


@dataclass
class JobConfig:
    """The whole job: what `launch` composes, validates and writes to `<run dir>/config.yaml`."""

    seed: int = 1234  # passed to seed_everything on every rank
    run: RunConfig = field(default_factory=RunConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    model: dict[str, Any] = field(default_factory=dict)  # `_target_` and the arguments of the model class
    data: dict[str, Any] = field(default_factory=dict)  # `_target_` and the arguments of the data module
    cluster: SlurmConfig | None = None  # None: run on this machine


def register_schemas() -> None:
    """Register the schemas in Hydra's ConfigStore, so that YAML files can name them in their defaults."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="job_schema", node=JobConfig)
    store.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    store.store(group="callbacks", name="callbacks_schema", node=CallbacksConfig)
    store.store(group="logger", name="logger_schema", node=LoggerConfig)
    store.store(group="cluster", name="slurm_schema", node=SlurmConfig)
