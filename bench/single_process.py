"""One process, CPU: a hand-written PyTorch loop vs the trainer core vs Lightning, and checkpoint save/load.

Every variant trains the same seeded model on the same in-memory data with Adam. The trainer core and
Lightning run with what a user leaves on: `self.log("train_loss", loss)` every step, the default logger
(TensorBoard) writing every 50 steps, the default ModelCheckpoint (a save at every epoch end); progress bar
and model summary off. The hand loop does what a plain script does: forward, loss, backward, step, zero_grad,
and a `torch.save` of model and optimizer at every epoch end (the work the checkpoint callback does).

What durability costs is measured apart, not hidden: the frameworks' clock stops at `on_train_end`, where the
trainer core's last checkpoint is serialised but may still be committing (fsync, verify, rename) on its
background thread, so a third table runs to `fit`'s return (last commit and teardown included); and the
checkpoint-save table has a `torch.save` followed by an fsync next to the trainer core's save committed on
return, which pays the same fsync.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench.common import Report, Table, interleaved

NAME = "single_process"
TITLE = "Single process (CPU): hand-written loop vs trainer core vs Lightning"


@dataclasses.dataclass
class Workload:
    """A model shape and how much of it to run."""

    name: str
    sizes: tuple[int, ...]
    batch_size: int
    samples: int
    epochs: int  # the first is warm-up and not measured
    repetitions: int
    targets: dict[str, float]

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(self.sizes, self.sizes[1:])):
            if index:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(width_in, width_out))
        return nn.Sequential(*layers)

    def loader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(1)
        inputs = torch.randn(self.samples, self.sizes[0], generator=generator)
        labels = torch.randint(0, self.sizes[-1], (self.samples,), generator=generator)
        return DataLoader(TensorDataset(inputs, labels), batch_size=self.batch_size, shuffle=True)


def workloads(quick: bool) -> list[Workload]:
    """(a) a tiny MLP where framework overhead shows, (b) a compute-bound MLP where it should vanish."""
    if quick:
        return [
            Workload("tiny", (32, 64, 10), 64, 2_000, 2, 1, {}),
            Workload("compute", (256, 512, 512, 10), 64, 256, 2, 1, {}),
        ]
    return [
        Workload("tiny", (32, 64, 10), 64, 20_000, 3, 5, {"trainer_core": 1.15}),
        Workload("compute", (1024, 4096, 4096, 10), 256, 256 * 12, 3, 3, {"trainer_core": 1.02}),
    ]


@dataclasses.dataclass
class Timeline:
    """Timestamps of one training run: each batch's start, per epoch, and the end of training."""

    epochs: list[list[float]] = dataclasses.field(default_factory=list)
    end: float = 0.0
    returned: float = 0.0  # when `fit` returned (the hand loop: its end)

    def steady_step(self) -> float:
        """Median time between consecutive batch starts within an epoch, after the first epoch."""
        gaps = [b - a for epoch in self.epochs[1:] for a, b in itertools.pairwise(epoch)]
        return sorted(gaps)[len(gaps) // 2]

    def step_with_epoch_ends(self) -> float:
        """Wall time from the second epoch's first batch to the end of training, per step."""
        return (self.end - self.epochs[1][0]) / self.measured_steps

    def step_to_return(self) -> float:
        """As `step_with_epoch_ends`, to `fit`'s return: the last checkpoint committed, the loggers closed."""
        return (self.returned - self.epochs[1][0]) / self.measured_steps

    @property
    def measured_steps(self) -> int:
        return sum(len(epoch) for epoch in self.epochs[1:])


# -- hand-written loop ---------------------------------------------------------------------------------------
def run_hand(workload: Workload, workdir: Path) -> Timeline:
    model, loader = workload.model(), workload.loader()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    timeline = Timeline()
    for epoch in range(workload.epochs):
        starts: list[float] = []
        timeline.epochs.append(starts)
        for inputs, labels in loader:
            starts.append(time.perf_counter())
            loss = F.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        torch.save(state, workdir / "hand.ckpt")
    timeline.end = timeline.returned = time.perf_counter()
    return timeline


# -- trainer core --------------------------------------------------------------------------------------------
def _trainer_core_classes() -> tuple[type, type]:
    import trainer_core as tc

    class Classifier(tc.TrainingModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, labels = batch
            loss = F.cross_entropy(self.net(inputs), labels)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Clock(tc.callbacks.Callback):
        def __init__(self) -> None:
            self.timeline = Timeline()

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.timeline.epochs.append([])

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.timeline.epochs[-1].append(time.perf_counter())

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.timeline.end = time.perf_counter()

    return Classifier, Clock


def run_trainer_core(workload: Workload, workdir: Path, keep: dict[str, Any] | None = None) -> Timeline:
    import trainer_core as tc

    classifier, clock_class = _trainer_core_classes()
    module, clock = classifier(workload.model()), clock_class()
    trainer = tc.Trainer(**_trainer_settings(workload, workdir / "tc"), callbacks=[clock])
    trainer.fit(module, train_dataloaders=workload.loader())
    clock.timeline.returned = time.perf_counter()
    if keep is not None:
        keep["trainer_core"] = trainer
    return clock.timeline


# -- Lightning -----------------------------------------------------------------------------------------------
def lightning_available() -> bool:
    try:
        import lightning.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def _lightning_classes() -> tuple[type, type]:
    import lightning.pytorch as pl

    class Classifier(pl.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, labels = batch
            loss = F.cross_entropy(self.net(inputs), labels)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.timeline = Timeline()

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.timeline.epochs.append([])

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.timeline.epochs[-1].append(time.perf_counter())

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.timeline.end = time.perf_counter()

    return Classifier, Clock


def run_lightning(workload: Workload, workdir: Path, keep: dict[str, Any] | None = None) -> Timeline:
    import lightning.pytorch as pl

    classifier, clock_class = _lightning_classes()
    module, clock = classifier(workload.model()), clock_class()
    trainer = pl.Trainer(**_trainer_settings(workload, workdir / "pl"), callbacks=[clock])
    trainer.fit(module, train_dataloaders=workload.loader())
    clock.timeline.returned = time.perf_counter()
    if keep is not None:
        keep["lightning"] = trainer
    return clock.timeline


def _trainer_settings(workload: Workload, root: Path) -> dict[str, Any]:
    # The same arguments for both frameworks; logger and ModelCheckpoint are their defaults (on).
    return {
        "max_epochs": workload.epochs,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 50,
        "default_root_dir": str(root),
    }


# -- measurement ---------------------------------------------------------------------------------------------
def _variants() -> dict[str, Callable[..., Timeline]]:
    variants: dict[str, Callable[..., Timeline]] = {"hand": run_hand, "trainer_core": run_trainer_core}
    if lightning_available():
        variants["lightning"] = run_lightning
    return variants


def measure_training(workload: Workload, workdir: Path, keep: dict[str, Any]) -> list[Table]:
    """Interleaved repetitions of every variant; two tables: steady-state step and step incl. epoch ends."""

    def repetition(name: str, runner: Callable[..., Timeline]) -> Callable[[], Timeline]:
        def once() -> Timeline:
            with tempfile.TemporaryDirectory(dir=workdir) as scratch:
                extra = {} if name == "hand" else {"keep": keep}
                return runner(workload, Path(scratch), **extra)

        return once

    runs = {name: repetition(name, runner) for name, runner in _variants().items()}
    timelines = interleaved(runs, workload.repetitions)
    shape = "->".join(map(str, workload.sizes))
    steps = len(timelines["hand"][0].epochs[1])
    about = (
        f"MLP {shape}, batch {workload.batch_size}, {workload.samples} samples ({steps} steps/epoch), "
        f"{workload.epochs} epochs of which the first is warm-up, {workload.repetitions} interleaved "
        "repetitions"
    )
    steady = {name: [t.steady_step() for t in runs] for name, runs in timelines.items()}
    whole = {name: [t.step_with_epoch_ends() for t in runs] for name, runs in timelines.items()}
    to_return = {name: [t.step_to_return() for t in runs] for name, runs in timelines.items()}
    return [
        Table.from_samples(
            f"{workload.name}: time per training step, steady state",
            f"{about}. Median gap between consecutive batch starts within an epoch.",
            steady,
            "hand",
            workload.targets,
        ),
        Table.from_samples(
            f"{workload.name}: time per training step, epoch ends included",
            f"{about}. Wall time of the measured epochs (with each epoch's checkpoint save) / steps.",
            whole,
            "hand",
            workload.targets,
        ),
        Table.from_samples(
            f"{workload.name}: time per training step, to fit's return",
            f"{about}. As above, to the return of fit: the trainer core's last checkpoint committed (fsync, "
            "verify, rename), loggers closed; the hand loop ends after its last torch.save (no fsync).",
            to_return,
            "hand",
        ),
    ]


def measure_checkpoints(
    workload: Workload, workdir: Path, keep: dict[str, Any], repetitions: int
) -> list[Table]:
    """Save and load of the full training state of the last trained run, interleaved."""
    from trainer_core import checkpoint

    # One file each: no save disturbs another's.
    names = ("trainer_core", "trainer_core_last", "plain", "plain_fsync", "lightning")
    paths = {name: workdir / f"{name}.ckpt" for name in names}
    keep["trainer_core"].save_checkpoint(paths["trainer_core"])
    state = checkpoint.load(paths["trainer_core"])  # the dict the trainer core writes, for torch.save
    trainer = keep["trainer_core"]

    def background_save() -> float:
        # What the training loop pays: ModelCheckpoint's save returns once the state is serialised, and the
        # previous commit has long finished by the next save point (here: waited for outside the timing).
        checkpoint.wait_for_pending()
        start = time.perf_counter()
        trainer.save_checkpoint(paths["trainer_core"], background=True)
        return time.perf_counter() - start

    def save_point_with_last() -> float:
        # ModelCheckpoint(save_last=True) at a save point: the top-k file and last.ckpt, one snapshot.
        checkpoint.wait_for_pending()
        start = time.perf_counter()
        trainer.save_checkpoint(paths["trainer_core"], background=True, also_as=[paths["trainer_core_last"]])
        return time.perf_counter() - start

    saves: dict[str, Callable[[], float]] = {
        "plain torch.save": _timed(lambda: torch.save(state, paths["plain"])),
        "plain torch.save + fsync": _timed(lambda: _save_and_fsync(state, paths["plain_fsync"])),
        "trainer_core": background_save,
        "trainer_core, top-k and last.ckpt": save_point_with_last,
        "trainer_core, committed on return": _timed(lambda: trainer.save_checkpoint(paths["trainer_core"])),
    }
    loads: dict[str, Callable[[], float]] = {
        "plain torch.load": _timed(lambda: torch.load(paths["plain"], weights_only=True)),
        "trainer_core": _timed(lambda: checkpoint.load(paths["trainer_core"])),
    }
    if "lightning" in keep:
        saves["lightning"] = _timed(lambda: keep["lightning"].save_checkpoint(paths["lightning"]))
        loads["lightning"] = _timed(lambda: torch.load(paths["lightning"], weights_only=False))
    save_samples = interleaved(saves, repetitions)
    load_samples = interleaved(loads, repetitions)
    megabytes = paths["trainer_core"].stat().st_size / 2**20
    about = f"Full training state of the {workload.name} MLP (weights, Adam state, ...): {megabytes:.1f} MiB"
    return [
        Table.from_samples(
            f"{workload.name}: checkpoint save",
            f"{about}; trainer_core is the training thread's cost of ModelCheckpoint's save (assemble the "
            "state and copy it into the snapshot buffers; serialisation, digest, fsync and rename follow on "
            "the writer thread); 'top-k and last.ckpt' is a save point with save_last=True (one snapshot, "
            "the writer links the second name); 'committed on return' is Trainer.save_checkpoint, durable "
            "(fsync) when it returns, unlike plain torch.save; 'plain torch.save + fsync' pays that fsync.",
            save_samples,
            "plain torch.save",
            {"trainer_core": 0.2, "trainer_core, top-k and last.ckpt": 0.2},
        ),
        Table.from_samples(
            f"{workload.name}: checkpoint load",
            f"{about}; trainer_core is trainer_core.checkpoint.load (weights_only=True, errors named).",
            load_samples,
            "plain torch.load",
            {"trainer_core": 1.2},
        ),
    ]


def _save_and_fsync(state: dict[str, Any], path: Path) -> None:
    """torch.save, then the fsync that makes it durable: the price the trainer core's commit also pays."""
    with open(path, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())


def _timed(action: Callable[[], Any]) -> Callable[[], float]:
    def once() -> float:
        start = time.perf_counter()
        action()
        return time.perf_counter() - start

    return once


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the frameworks' start-up chatter and warnings (num_workers hints and the like)."""
    # Lightning's loggers have levels of their own, so each one known by now is quietened, not only the root.
    lightning_available()  # imports Lightning, so that its loggers exist
    prefixes = ("lightning", "trainer_core")
    known = [name for name in logging.root.manager.loggerDict if name.startswith(prefixes)]
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "trainer_core", *known)
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def run(quick: bool = False) -> Report:
    """Measure every workload and checkpoint save/load; return the report."""
    tables: list[Table] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-single-"))
    try:
        with _quiet():
            for workload in workloads(quick):
                keep: dict[str, Any] = {}
                tables += measure_training(workload, workdir, keep)
                tables += measure_checkpoints(workload, workdir, keep, 2 if quick else 5)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    notes = [
        "Variants run interleaved (one repetition of each per round, order rotated every round); "
        "medians over repetitions, with min and max; ratios are medians over the hand loop's median.",
        "The hand loop saves model and optimizer state with torch.save at each epoch end, as the "
        "checkpoint callback does for the frameworks.",
        "Both frameworks: self.log('train_loss', loss) every step, default logger (TensorBoard) with "
        "log_every_n_steps=50, default ModelCheckpoint, progress bar and model summary off.",
        "Steady state excludes the first epoch and the epoch boundaries; 'epoch ends included' adds the "
        "per-epoch checkpoint save, loader restart and logger flushes.",
        "The trainer core's ModelCheckpoint save costs the training thread the assembly and "
        "serialisation only: fsync, verification, rename and the deletion of the replaced top-k file run "
        "on its committer thread (the deletion after the new file is committed). The clock of 'epoch ends "
        "included' stops at on_train_end, before fit waits for the last commit; 'to fit's return' includes "
        "that wait, the price of durability (an fsync of the file) that a plain torch.save does not pay; "
        "the save table's 'plain torch.save + fsync' row measures that price alone.",
        "The hand loop overwrites one file; the trainer core and Lightning write each checkpoint to a new "
        "file (the trainer core: a temporary renamed over its target; both: a new top-k name each epoch). "
        "Where a virtual machine backs newly used memory lazily, a new file's page-cache pages cost much "
        "more on first touch than the pages an overwrite has just freed: part of the compute-bound "
        "epoch-end gap.",
    ]
    settings = {"mode": "quick (smoke run, numbers not meaningful)" if quick else "full", "pid": os.getpid()}
    return Report(NAME, TITLE, tables, notes, settings)
