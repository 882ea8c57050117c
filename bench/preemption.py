"""Preemption costs: signal to committed last.ckpt, restart to first step, and the per-step stop check.

1. `launch trainer.devices=2` trains the built-in example (hidden 1024: about 13 MB of checkpoint with its
   optimizer state). Once its first last.ckpt is committed it gets SIGTERM; measured: from the signal to
   the rename of the new last.ckpt (the commit), and to the exit of `launch`. Next to it, a plain
   `torch.save` of the same state to the same disk.
2. A fresh `launch ... run.id=<id>` (what a requeued job does): from its process start to the resumed
   first training step (the example logs "training starts at step N" in on_train_start, right before the
   first batch); next to a plain `torch.load` of the same state.
3. Two Gloo ranks, a tiny MLP: the median time per training step with the stop check (one small all-reduce
   per step boundary) and with the check replaced by `False`, interleaved.

Run as `python -m bench preemption`; `python -m bench.preemption step VARIANT OUT` is one rank of part 3.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from bench.common import Report, Table, interleaved

NAME = "preemption"
TITLE = "Preemption: signal to committed checkpoint, restart to first step, per-step stop check"
REPO = Path(__file__).resolve().parents[1]
LAUNCH_ARGS = [
    "trainer.devices=2",
    "trainer.max_epochs=1000",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "model.hidden=1024",
    "+model.step_delay_s=0.05",
]
STARTS = "training starts at step"


def _launch(cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).parent / "launch")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [exe, *LAUNCH_ARGS, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait(predicate: Any, timeout_s: float, interval_s: float = 0.001) -> float:
    """Poll until predicate() is true; the time.time() at which it was seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(interval_s)
    raise TimeoutError(f"benchmark: condition not met within {timeout_s:.0f}s")


def _start_times(log_file: Path) -> list[float]:
    """The wall-clock times of the "training starts" lines in a rank log."""
    times = []
    for line in log_file.read_text().splitlines() if log_file.is_file() else []:
        if STARTS in line:
            stamp = " ".join(line.split()[1:3])  # "[rank0] 2026-01-01 12:00:00,123 INFO ..."
            times.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times


def stop_and_restart_once(workdir: Path) -> dict[str, float]:
    """One interrupted run and its restart; seconds for each measured interval."""
    first = _launch(workdir)
    _wait(lambda: list(workdir.glob("runs/*/*/checkpoints/last.ckpt")), 180, 0.05)
    last = next(workdir.glob("runs/*/*/checkpoints/last.ckpt"))
    run_dir = last.parents[1]
    time.sleep(0.3)  # inside an epoch, away from the epoch-end checkpoint
    inode = last.stat().st_ino
    signalled = time.time()
    first.send_signal(signal.SIGTERM)
    committed = _wait(lambda: last.exists() and last.stat().st_ino != inode, 60)
    first.wait(timeout=120)
    exited = time.time()
    log_file = run_dir / "logs" / "rank0.log"
    seen = len(_start_times(log_file))
    started = time.time()
    second = _launch(workdir, f"run.id={run_dir.name}")
    _wait(lambda: len(_start_times(log_file)) > seen, 180, 0.01)
    first_step = _start_times(log_file)[-1]
    second.send_signal(signal.SIGTERM)
    second.wait(timeout=120)
    return {
        "signal_to_commit": committed - signalled,
        "signal_to_exit": exited - signalled,
        "start_to_first_step": first_step - started,
        "ckpt_bytes": float(last.stat().st_size),
    }


def plain_save_load(checkpoint: Path, repetitions: int) -> dict[str, list[float]]:
    """torch.save and torch.load of the same state, on the same disk."""
    state = torch.load(checkpoint, weights_only=True)
    saves, loads = [], []
    target = checkpoint.with_name("plain.pt")
    for _ in range(repetitions):
        began = time.perf_counter()
        torch.save(state, target)
        saves.append(time.perf_counter() - began)
        began = time.perf_counter()
        torch.load(target, weights_only=True)
        loads.append(time.perf_counter() - began)
    target.unlink()
    return {"save": saves, "load": loads}


def measure_restart(repetitions: int) -> tuple[list[Table], dict[str, Any]]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_preempt_") as scratch:
        for index in range(repetitions):
            workdir = Path(scratch) / str(index)
            workdir.mkdir()
            runs.append(stop_and_restart_once(workdir))
        checkpoint = next(Path(scratch).glob("0/runs/*/*/checkpoints/last.ckpt"))
        plain = plain_save_load(checkpoint, max(3, repetitions))
    size_mb = runs[0]["ckpt_bytes"] / 1e6
    commit = Table.from_samples(
        "Signal to committed last.ckpt (2 ranks)",
        f"SIGTERM to `launch` until last.ckpt is renamed into place ({size_mb:.1f} MB), and until `launch` "
        "exits; baseline: a plain torch.save of the same state.",
        {
            "torch.save": plain["save"],
            "signal -> commit": [run["signal_to_commit"] for run in runs],
            "signal -> launch exits": [run["signal_to_exit"] for run in runs],
        },
        baseline="torch.save",
    )
    restart = Table.from_samples(
        "Restart to the first training step (2 ranks)",
        "A fresh `launch run.id=<id>` process (as a requeued job) until its first resumed step; baseline: a "
        "plain torch.load of the same state.",
        {
            "torch.load": plain["load"],
            "launch start -> first step": [run["start_to_first_step"] for run in runs],
        },
        baseline="torch.load",
    )
    return [commit, restart], {"checkpoint_mb": round(size_mb, 1)}


# -- part 3: the per-step check, one rank of a 2-rank run -------------------------------------------------
def step_rank(variant: str, out: Path, quick: bool) -> None:
    """Fit a tiny MLP on this rank; rank zero writes its median step time to `out`."""
    import trainer_core as tc
    from trainer_core.loops import fit

    if variant == "no_check":
        fit.FitLoop._preempted = lambda self, at_once=False: False  # type: ignore[method-assign]
    torch.set_num_threads(1)
    tc.seed_everything(0)
    samples = 2048 if quick else 8192
    features, labels = torch.randn(samples, 32), torch.randint(0, 10, (samples,))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, labels), batch_size=32, shuffle=True
    )
    timer = _StepTimer()
    trainer = tc.Trainer(
        max_epochs=2, accelerator="cpu", devices=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(_TinyModule(), train_dataloaders=loader)
    if trainer.is_global_zero:
        out.write_text(json.dumps({"step_s": timer.steady_median()}))


class _TinyModule:
    """Built lazily (trainer_core is imported in the rank only)."""

    def __new__(cls) -> Any:
        import trainer_core as tc

        class Tiny(tc.TrainingModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
                )

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                features, labels = batch
                return torch.nn.functional.cross_entropy(self.net(features), labels)

            def configure_optimizers(self) -> Any:
                return torch.optim.Adam(self.parameters(), lr=1e-3)

        return Tiny()


class _StepTimer:
    """Times between consecutive training batch starts of the second epoch (the first is warm-up)."""

    def __new__(cls) -> Any:
        import trainer_core as tc

        class StepTimer(tc.callbacks.Callback):
            def __init__(self) -> None:
                self.starts: list[float] = []

            def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
                if trainer.current_epoch >= 1:
                    self.starts.append(time.perf_counter())

            def steady_median(self) -> float:
                gaps = [b - a for a, b in zip(self.starts, self.starts[1:])]
                return statistics.median(gaps)

        return StepTimer()


def run_step_job(variant: str, quick: bool) -> float:
    """2 ranks of part 3 with torchrun's variables on a free port; rank zero's median step time."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = Path(tempfile.mkstemp(prefix="bench_step_", suffix=".json")[1])
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))  # fmt: skip
    command = [sys.executable, "-m", "bench.preemption", "step", variant, str(out)] + ["--quick"] * quick
    ranks = [
        subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=REPO)
        for r in range(2)
    ]
    codes = [rank.wait(timeout=600) for rank in ranks]
    if codes != [0, 0]:
        raise RuntimeError(f"benchmark ranks of {variant} exited with {codes}")
    step_s = float(json.loads(out.read_text())["step_s"])
    out.unlink()
    return step_s


def measure_check(repetitions: int, quick: bool) -> Table:
    runs = {name: (lambda name=name: run_step_job(name, quick)) for name in ("no_check", "check")}
    samples = interleaved(runs, repetitions)
    return Table.from_samples(
        "Per-step cost of the stop check, no signal (2 Gloo ranks, tiny MLP)",
        "Median time between training batch starts (32->64->10 MLP, batch 32 per rank, Adam, second epoch), "
        "with the stop check and with it replaced by False; target: within 1%.",
        samples,
        baseline="no_check",
        targets={"check": 1.01},
    )


def run(quick: bool = False) -> Report:
    """All three parts."""
    tables, settings = measure_restart(1 if quick else 3)
    tables.append(measure_check(2 if quick else 7, quick))
    notes = [
        "Parts 1 and 2 drive the real `launch` command (2 local ranks, Gloo, torch's elastic agent); a "
        "commit is seen as the change of last.ckpt's inode (the rename), polled every millisecond.",
        "Each training step sleeps 50 ms (model.step_delay_s) so the signal lands inside training: signal to "
        "commit includes the wait for the next step boundary (up to one step), then the agreement, the "
        "write, fsync, verification and rename.",
        "The restart includes the Python and torch start-up of `launch` and of both ranks, the rendezvous, "
        "reading and verifying last.ckpt, and the restore of every state.",
        "Part 3 interleaves the two variants, rotating their order each round.",
    ]
    return Report(NAME, TITLE, tables, notes, {"ranks": 2, **settings})


if __name__ == "__main__":
    step_rank(sys.argv[2], Path(sys.argv[3]), quick="--quick" in sys.argv[4:])
