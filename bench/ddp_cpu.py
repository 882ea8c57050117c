"""Two Gloo ranks on CPU: a hand-written DDP loop vs the trainer core vs Lightning `strategy="ddp"`.

Each variant trains the same seeded MLP with Adam on the same in-memory data, on 2 ranks started as torchrun
would (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT on a free port; one thread per rank). The hand loop does
what people write: a `DistributedSampler` with `set_epoch`, the model in `DistributedDataParallel`, rank
zero's loss read every step (`loss.item()`), and at the epoch end a validation pass whose loss is
all-reduced. The trainer core logs `self.log("train_loss", loss, on_step=True, on_epoch=True,
sync_dist=True)` every step and a `sync_dist` validation loss; Lightning runs the same module code. Logger,
checkpointing, progress bar and model summary are off for all three, so the table shows the cost of the
training step path itself. Process start and the rendezvous are outside the measurement: ranks time their
own batches.

Every rank writes its own result file and then ends without the interpreter's teardown (`os._exit(0)`, as
`launcher/rank_main.py` ends a finished rank): torch's Gloo shutdown at interpreter exit sometimes aborts a
process that has finished its work. A run counts only when every rank wrote its result; a run that lost a
rank before that is run once more, and the report lists it.

Run as `python -m bench ddp_cpu`; `python -m bench.ddp_cpu VARIANT WORKLOAD OUT_DIR` is one rank of one run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench.common import Report, Table, interleaved

NAME = "ddp_cpu"
TITLE = "DDP on 2 Gloo ranks (CPU): hand-written DDP loop vs trainer core vs Lightning"
REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("hand_ddp", "trainer_core", "lightning")


@dataclasses.dataclass
class Workload:
    """A model shape and how much of it to run (samples are split over the 2 ranks)."""

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
        for index, (width_in, width_out) in enumerate(itertools.pairwise(self.sizes)):
            if index:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(width_in, width_out))
        return nn.Sequential(*layers)

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        """Training data and a validation set a tenth of its size (at least two batches)."""
        generator = torch.Generator().manual_seed(1)
        total = self.samples + max(self.samples // 10, 4 * self.batch_size)
        inputs = torch.randn(total, self.sizes[0], generator=generator)
        labels = torch.randint(0, self.sizes[-1], (total,), generator=generator)
        cut = self.samples
        return TensorDataset(inputs[:cut], labels[:cut]), TensorDataset(inputs[cut:], labels[cut:])


def workloads(quick: bool) -> dict[str, Workload]:
    """(a) the tiny MLP where framework overhead shows, (b) a compute-bound MLP where it should vanish."""
    if quick:
        return {
            "tiny": Workload("tiny", (32, 64, 10), 64, 2_000, 2, 1, {}),
            "compute": Workload("compute", (256, 512, 512, 10), 64, 512, 2, 1, {}),
        }
    return {
        "tiny": Workload("tiny", (32, 64, 10), 64, 20_000, 3, 5, {"trainer_core": 1.15}),
        "compute": Workload(
            "compute", (1024, 4096, 4096, 10), 256, 2 * 256 * 4, 3, 5, {"trainer_core": 1.02}
        ),
    }


@dataclasses.dataclass
class Timeline:
    """Timestamps of one rank's run: each batch's start, per epoch, and the end of training."""

    epochs: list[list[float]] = dataclasses.field(default_factory=list)
    end: float = 0.0

    def steady_step(self) -> float:
        """Median time between consecutive batch starts within an epoch, after the first epoch."""
        gaps = [b - a for epoch in self.epochs[1:] for a, b in itertools.pairwise(epoch)]
        return sorted(gaps)[len(gaps) // 2]

    def step_with_epoch_ends(self) -> float:
        """Wall time from the second epoch's first batch to the end of training, per step."""
        steps = sum(len(epoch) for epoch in self.epochs[1:])
        return (self.end - self.epochs[1][0]) / steps


# -- the ranks' side --------------------------------------------------------------------------------------
def _hand_ddp(workload: Workload) -> Timeline:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    train, val = workload.datasets()
    sampler: DistributedSampler[Any] = DistributedSampler(train, world_size, rank, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=workload.batch_size, sampler=sampler)
    val_loader = DataLoader(
        val, batch_size=workload.batch_size, sampler=DistributedSampler(val, shuffle=False)
    )
    model = DistributedDataParallel(workload.model())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    timeline, losses = Timeline(), []
    for epoch in range(workload.epochs):
        sampler.set_epoch(epoch)
        starts: list[float] = []
        timeline.epochs.append(starts)
        for inputs, labels in loader:
            starts.append(time.perf_counter())
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if rank == 0:
                losses.append(loss.item())
        with torch.no_grad():
            totals = torch.zeros(2)
            for inputs, labels in val_loader:
                totals += torch.stack([F.cross_entropy(model.module(inputs), labels, reduction="sum"),
                                       torch.tensor(float(len(labels)))])  # fmt: skip
            dist.all_reduce(totals)
    timeline.end = time.perf_counter()
    dist.destroy_process_group()
    return timeline


def _module_code(base: type) -> type:
    """The same TrainingModule/LightningModule body for the trainer core and Lightning."""

    class Classifier(base):  # type: ignore[valid-type,misc]
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, labels = batch
            loss = F.cross_entropy(self.net(inputs), labels)
            self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            inputs, labels = batch
            self.log("val_loss", F.cross_entropy(self.net(inputs), labels), sync_dist=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return Classifier


def _timeline_callback(base: type, timeline: Timeline) -> Any:
    class Stamps(base):  # type: ignore[valid-type,misc]
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            timeline.epochs.append([])

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            timeline.epochs[-1].append(time.perf_counter())

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            timeline.end = time.perf_counter()

    return Stamps()


def _framework(variant: str, workload: Workload) -> Timeline:
    if variant == "trainer_core":
        import trainer_core as framework
        from trainer_core import TrainingModule as ModuleBase
        from trainer_core.callbacks import Callback
    else:
        import lightning.pytorch as framework  # type: ignore[no-redef]
        from lightning.pytorch import Callback  # type: ignore[assignment]
        from lightning.pytorch import LightningModule as ModuleBase  # type: ignore[assignment]
    timeline = Timeline()
    train, val = workload.datasets()
    extra: dict[str, Any] = {"strategy": "ddp"} if variant == "lightning" else {}
    trainer = framework.Trainer(
        accelerator="cpu", devices=2, max_epochs=workload.epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[_timeline_callback(Callback, timeline)], default_root_dir=tempfile.mkdtemp(), **extra,
    )  # fmt: skip
    model = _module_code(ModuleBase)(workload.model())
    trainer.fit(
        model,
        DataLoader(train, batch_size=workload.batch_size, shuffle=True),
        DataLoader(val, batch_size=workload.batch_size),
    )
    return timeline


def pin_to_core(rank: int) -> int | None:
    """Bind this process (and the threads it starts later) to one CPU of its own; the CPU, or None.

    Two ranks left to the scheduler on two cores share them with each other's Gloo threads, and a run's
    steps come out 20-40 % slower or faster by chance (which core each thread lands on); one core per rank,
    as Slurm's `--cpu-bind=cores` gives a task, measures the step path itself. Every variant is pinned alike.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < RANKS:
        return None
    os.sched_setaffinity(0, {cpus[rank]})
    return cpus[rank]


def rank_main(variant: str, workload_name: str, out_dir: Path, quick: bool) -> None:
    """One rank of one run: train, write this rank's timings to `out_dir/rank<R>.json`, exit at once."""
    pin_to_core(int(os.environ["RANK"]))
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    workload = workloads(quick)[workload_name]
    timeline = _hand_ddp(workload) if variant == "hand_ddp" else _framework(variant, workload)
    summary = {"steady": timeline.steady_step(), "with_epoch_ends": timeline.step_with_epoch_ends()}
    result = out_dir / f"rank{os.environ['RANK']}.json"
    partial = result.with_suffix(".tmp")
    partial.write_text(json.dumps(summary))
    partial.replace(result)  # a reader never sees half a file
    _exit_finished_rank()


def _exit_finished_rank() -> None:
    """End a rank whose result is written, skipping the interpreter teardown (its Gloo shutdown may abort)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- the runner's side ------------------------------------------------------------------------------------
RANKS = 2
RANK_TIMEOUT_S = 900


class RunFailed(RuntimeError):
    """A rank of one run ended (or hung) before writing its result file."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rank_env(port: int) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(RANKS),
                LOCAL_WORLD_SIZE=str(RANKS), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))  # fmt: skip
    return base


def _wait_all(ranks: list[subprocess.Popen[bytes]]) -> list[int | None]:
    """Every rank's exit code; a rank still running after `RANK_TIMEOUT_S` is killed (its code is None)."""
    deadline = time.monotonic() + RANK_TIMEOUT_S
    codes: list[int | None] = []
    for rank in ranks:
        try:
            codes.append(rank.wait(timeout=max(deadline - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for rank, code in zip(ranks, codes, strict=True):
        if code is None:
            rank.kill()
            rank.wait()
    return codes


def run_once(variant: str, workload: str, quick: bool, notes: list[str]) -> dict[str, float]:
    """Start the ranks of one run as torchrun would, wait for them, return rank zero's timings.

    Raises `RunFailed` unless every rank wrote its result file; a rank that exits with an error after writing
    it (a teardown abort) leaves its run good, and is recorded in `notes`.
    """
    port, workdir = _free_port(), Path(tempfile.mkdtemp(prefix="ddp_cpu_"))
    command = [sys.executable, "-m", "bench.ddp_cpu", variant, workload, str(workdir)] + ["--quick"] * quick
    ranks = []
    for r in range(RANKS):
        with (workdir / f"rank{r}.err").open("w") as stderr:
            env = {**_rank_env(port), "RANK": str(r), "LOCAL_RANK": str(r)}
            ranks.append(
                subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
            )
    codes = _wait_all(ranks)
    results = [workdir / f"rank{r}.json" for r in range(RANKS)]
    missing = [r for r, path in enumerate(results) if not path.is_file()]
    if missing:
        errors = "\n".join(f"rank {r}: " + (workdir / f"rank{r}.err").read_text()[-3000:] for r in missing)
        killed = f", None: killed after {RANK_TIMEOUT_S} s" if None in codes else ""
        raise RunFailed(
            f"{variant} on {workload}: rank(s) {missing} wrote no result (exit codes {codes}{killed}; output "
            f"kept in {workdir})\n{errors}"
        )
    if any(code != 0 for code in codes):
        notes.append(f"{variant} on {workload}: exit codes {codes} after every rank wrote its result (kept)")
    return dict(json.loads(results[0].read_text()))


def run_job(variant: str, workload: str, quick: bool, failures: list[str]) -> dict[str, float]:
    """One run; after a run that lost a rank, note it in `failures` and run it once more."""
    try:
        return run_once(variant, workload, quick, failures)
    except RunFailed as error:
        failures.append(str(error).splitlines()[0])
        logging.getLogger(__name__).warning("%s; running it once more", error)
        return run_once(variant, workload, quick, failures)


def lightning_available() -> bool:
    try:
        import lightning.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def measure(workload: Workload, quick: bool, failures: list[str]) -> list[Table]:
    """Interleaved runs of every variant; per-step medians over the repetitions."""
    names = [v for v in VARIANTS if v != "lightning" or lightning_available()]
    runs = {name: (lambda name=name: run_job(name, workload.name, quick, failures)) for name in names}
    samples = interleaved(runs, workload.repetitions)
    shape = "->".join(map(str, workload.sizes))
    note = (f"{shape}, batch {workload.batch_size} per rank, {workload.samples} samples over 2 ranks, "
            f"{workload.epochs} epochs of which the first is warm-up, {workload.repetitions} interleaved "
            "repetitions; each sample is the median over one run's steps")  # fmt: skip
    tables = []
    for key, what in (("steady", "steady training step"), ("with_epoch_ends", "step incl. epoch ends")):
        tables.append(
            Table.from_samples(
                f"{workload.name}: {what}",
                note,
                {name: [run[key] for run in results] for name, results in samples.items()},
                baseline="hand_ddp",
                targets=workload.targets if key == "steady" else None,
            )
        )
    return tables


def run(quick: bool = False) -> Report:
    """Both workloads, every variant, interleaved."""
    load_before = os.getloadavg()[0]  # other work on the 2 cores inflates every number
    failures: list[str] = []
    tables = [table for workload in workloads(quick).values() for table in measure(workload, quick, failures)]
    notes = [
        "2 ranks as separate processes with torchrun's variables, Gloo, OMP_NUM_THREADS=1 each, every rank "
        "bound to a CPU of its own (as Slurm's --cpu-bind=cores binds a task; left to the scheduler, runs of "
        "the same program differ by 20-40 % depending on where the ranks' and Gloo's threads land).",
        "Variants run interleaved (one run of each per round, order rotated every round).",
        "Each run's number is rank zero's median time between consecutive batch starts (steady) or its "
        "wall time over all steps after the first epoch, validation and epoch ends included.",
        "The trainer core reduces sync_dist values when they are read (epoch end, logger write), not on "
        "every self.log call; with the logger off nothing reads the step value during the epoch.",
        "Every rank writes its own result file and ends with os._exit(0) once it is written (Gloo's teardown "
        "at interpreter exit sometimes aborts); a run counts only when every rank wrote its result, and a "
        "run that lost a rank before that runs once more (listed under failed runs).",
    ]
    settings = {
        "ranks": RANKS,
        "backend": "gloo",
        "ranks bound to CPUs": "yes"
        if len(os.sched_getaffinity(0)) >= RANKS
        else "no (fewer CPUs than ranks)",
        "lightning_strategy": "ddp",
        "load average before / after (1 min)": f"{load_before:.2f} / {os.getloadavg()[0]:.2f}",
        "failed runs (each run again once)": "; ".join(failures) or "none",
    }
    return Report(NAME, TITLE, tables, notes, settings)


if __name__ == "__main__":
    rank_main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), quick="--quick" in sys.argv[4:])
