"""Start-up: command start to the first training step and to the end of a 1-epoch run, `launch` vs peers.

The work is the built-in example for one epoch (4000 Gaussian-blob samples, an MLP 32->128->128->10, AdamW,
batch 64, validation, TensorBoard scalars, a checkpoint), started as a user starts it:

- `launch` with a user config dir (`bench/startup/conf`) whose `model=timed` is the example's classifier
  with a first-step stamp (`bench/startup/timed_model.py`); nothing in the launcher is changed for this;
- `python bench/startup/hand.py`: the same work as a hand-written script;
- `python bench/startup/lightning_hydra.py`: a Lightning + Hydra script (when Lightning is importable);
- with 2 ranks: `launch trainer.devices=2` vs `torchrun --standalone --nproc-per-node=2` of the same
  hand-written script (DDP on Gloo) and of the Lightning + Hydra script (`strategy=ddp`).

Every program appends `time.time()` at its first training step to the file named by `STARTUP_STAMP`
(`bench/startup/stamp.py`); the benchmark reads the clock just before it starts the command and after the
command exits. With 2 ranks the first step is the later of the two ranks' first steps. Then short commands:
the pieces of start-up timed alone (interpreter, Hydra composition, torch, the first optimizer, trainer_core,
Lightning), and bad config input to `launch`, which must fail with exit code 2 in under a second.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Report, Table, interleaved

NAME = "launch_startup"
TITLE = "Launch start-up: command start to first training step and to the end of a 1-epoch run"
REPO = Path(__file__).resolve().parents[1]
STARTUP = REPO / "bench" / "startup"
BIN = Path(sys.executable).parent
STAMP_ENV = "STARTUP_STAMP"
FAILED_DIR = Path(tempfile.gettempdir()) / "launch_startup_failures"  # output of failed runs, kept
# Config errors that `launch` must report with exit code 2, and the limit each is held to (every repetition):
# a bad override in under a second, an impossible resource request "in seconds" (DESIGN.md section 3).
BAD_INPUTS: dict[str, tuple[list[str], float]] = {
    "launch trainer.devicez=2 (unknown key)": (["trainer.devicez=2"], 1.0),
    "launch trainer.max_epochs=abc (wrong type)": (["trainer.max_epochs=abc"], 1.0),
    "launch trainer.accelerator=gpu (no GPU here)": (["trainer.accelerator=gpu"], 5.0),
}
PYTHON_START = "python -c pass"
# The pieces every program's start-up is made of, each timed alone (start to exit of a short command).
_OPTIMIZER = "import torch; torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())"
PIECES: dict[str, list[str]] = {
    "import torch": ["-c", "import torch"],
    "import torch + first optimizer (imports torch._dynamo)": ["-c", _OPTIMIZER],
    "import trainer_core": ["-c", "import trainer_core"],
    "import lightning.pytorch": ["-c", "import lightning.pytorch"],
}
LAUNCH_COMPOSE = "launch --cfg job (Hydra compose only, no torch)"


@dataclasses.dataclass
class Timing:
    """One run: seconds from the command's start to the first training step and to its exit."""

    first_step: float
    end: float


@dataclasses.dataclass
class Program:
    """A command that trains the example for one epoch; `argv(out_dir)` is its command line."""

    name: str
    ranks: int
    argv: Callable[[Path], list[str]]


def programs(workdir: Path, lightning: bool) -> list[Program]:
    """The variants, single-process first; every one reads the dataset from `workdir/data`."""
    data = workdir / "data"
    launch = [str(BIN / "launch"), "--config-dir", str(STARTUP / "conf"), "model=timed"]
    launch += [f"data.data_dir={data}", "trainer.max_epochs=1"]
    hand = [str(STARTUP / "hand.py"), "--data-dir", str(data)]
    lightning_app = [str(STARTUP / "lightning_hydra.py"), f"data.data_dir={data}"]
    lightning_ddp = [*lightning_app, "trainer.devices=2", "+trainer.strategy=ddp"]
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2"]
    found = [
        Program("launch", 1, lambda out: [*launch, f"run.root={out}"]),
        Program("hand", 1, lambda out: [sys.executable, *hand, "--out-dir", str(out)]),
        Program("lightning_hydra", 1, lambda out: [sys.executable, *lightning_app, f"hydra.run.dir={out}"]),
        Program("launch devices=2", 2, lambda out: [*launch, "trainer.devices=2", f"run.root={out}"]),
        Program("torchrun hand_ddp", 2, lambda out: [*torchrun, *hand, "--out-dir", str(out)]),
        Program(
            "torchrun lightning_hydra", 2, lambda out: [*torchrun, *lightning_ddp, f"hydra.run.dir={out}"]
        ),
    ]
    return [p for p in found if lightning or "lightning" not in p.name]


def environment() -> dict[str, str]:
    """This environment, with the repository importable (the user model and the stamp live in `bench`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC", STAMP_ENV))}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS"):
        env.pop(key, None)  # each tool picks its own thread count and rank layout, as for a user
    # Python's default: compiled modules are cached (written by the warm-up round), as on a user's machine;
    # without the cache every start recompiles the project's own modules (tenths of a second for ours).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class ProgramFailed(RuntimeError):
    """A program exited with an error; its output directory was kept for diagnosis."""


def run_program(
    program: Program, workdir: Path, counter: itertools.count[int], failures: list[str]
) -> Timing:
    """Run the program; after a failure, keep its output, note it in `failures` and run it once more.

    A crash is a finding to report (it goes into the report's settings), but one crash should not throw
    away the rest of a long interleaved measurement.
    """
    try:
        return run_once(program, workdir, next(counter))
    except ProgramFailed as error:
        failures.append(str(error).splitlines()[0])
        return run_once(program, workdir, next(counter))


def run_once(program: Program, workdir: Path, number: int) -> Timing:
    """Start the program in a fresh output directory, wait for it, and read its first-step stamps."""
    # A plain directory name: it becomes part of Hydra overrides, whose grammar reserves "=" and spaces.
    out = workdir / f"{re.sub(r'[^A-Za-z0-9_]', '_', program.name)}-{number}"
    out.mkdir(parents=True)
    stamp = out / "first_step.txt"
    env = {**environment(), STAMP_ENV: str(stamp)}
    with (out / "output.txt").open("w") as output:
        started = time.time()
        completed = subprocess.run(
            program.argv(out), cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT, timeout=600
        )
        ended = time.time()
    stamps = _read_stamps(stamp)
    if completed.returncode != 0 or len(stamps) != program.ranks:
        FAILED_DIR.mkdir(exist_ok=True)
        kept = Path(tempfile.mkdtemp(prefix=f"{out.name}-", dir=FAILED_DIR))
        shutil.copytree(out, kept, dirs_exist_ok=True)
        tail = (out / "output.txt").read_text()[-4000:]
        raise ProgramFailed(
            f"{program.name} exited with {completed.returncode} after {len(stamps)} of {program.ranks} "
            f"first-step stamps; its output is kept in {kept}\n{tail}"
        )
    return Timing(max(stamps.values()) - started, ended - started)


def _read_stamps(path: Path) -> dict[str, float]:
    lines = path.read_text().splitlines() if path.is_file() else []
    return {rank: float(value) for rank, value in (line.split() for line in lines)}


def time_failure(argv: list[str], workdir: Path, expected_code: int) -> float:
    """Seconds from start to exit of a command that must exit with `expected_code`."""
    started = time.perf_counter()
    completed = subprocess.run(
        argv, cwd=workdir, env=environment(), capture_output=True, text=True, timeout=120
    )
    elapsed = time.perf_counter() - started
    if completed.returncode != expected_code:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {completed.returncode}, expected {expected_code}:\n"
            f"{completed.stderr[-3000:]}"
        )
    return elapsed


def measure_training(
    workdir: Path, repetitions: int, warm_up: bool, lightning: bool, failures: list[str]
) -> list[Table]:
    """Every program, interleaved (one warm-up round first, not recorded); four tables."""
    counter = itertools.count()
    variants = {
        program.name: functools.partial(run_program, program, workdir, counter, failures)
        for program in programs(workdir, lightning)
    }
    if warm_up:
        interleaved(variants, 1)  # generates the dataset and fills the file cache for every program
    samples = interleaved(variants, repetitions)
    single = {
        name: runs for name, runs in samples.items() if "devices=2" not in name and "torchrun" not in name
    }
    dual = {name: runs for name, runs in samples.items() if name not in single}
    about = f"{repetitions} interleaved repetitions; time from just before the command starts"
    tables = []
    for group, baseline, target_name, what in (
        (single, "hand", "launch", "1 process"),
        (dual, "torchrun hand_ddp", "launch devices=2", "2 ranks"),
    ):
        for field, title in (("first_step", "to the first training step"), ("end", "to the end of 1 epoch")):
            values = {name: [getattr(run, field) for run in runs] for name, runs in group.items()}
            targets = {target_name: 1.0} if field == "first_step" else None
            tables.append(Table.from_samples(f"{what}: {title}", about, values, baseline, targets))
    return tables


def measure_short_commands(
    workdir: Path, repetitions: int, lightning: bool
) -> tuple[list[Table], dict[str, str]]:
    """Start-up pieces and bad config input, interleaved; the tables and each bad input's limit check."""
    python = [sys.executable]
    variants: dict[str, Callable[[], float]] = {
        PYTHON_START: functools.partial(time_failure, [*python, "-c", "pass"], workdir, 0),
        LAUNCH_COMPOSE: functools.partial(time_failure, [str(BIN / "launch"), "--cfg", "job"], workdir, 0),
    }
    for name, arguments in PIECES.items():
        if lightning or "lightning" not in name:
            variants[name] = functools.partial(time_failure, [*python, *arguments], workdir, 0)
    for name, (overrides, _) in BAD_INPUTS.items():
        argv = [str(BIN / "launch"), f"run.root={workdir / 'bad'}", *overrides]
        variants[name] = functools.partial(time_failure, argv, workdir, 2)
    samples = interleaved(variants, repetitions)
    checks = {
        f"{name}: every repetition under {limit:.0f} s": "yes" if max(samples[name]) < limit else "NO"
        for name, (_, limit) in BAD_INPUTS.items()
    }
    about = f"{repetitions} interleaved repetitions; start to exit of the command"
    pieces = {name: values for name, values in samples.items() if name not in BAD_INPUTS}
    bad = {PYTHON_START: samples[PYTHON_START]} | {name: samples[name] for name in BAD_INPUTS}
    tables = [
        Table.from_samples("start-up pieces, each alone", about, pieces, PYTHON_START),
        Table.from_samples("bad config input: start to exit with code 2", about, bad, PYTHON_START),
    ]
    return tables, checks


def versus_lightning(tables: list[Table]) -> dict[str, str]:
    """DESIGN.md's budget: `launch` reaches its first step faster than a Lightning + Hydra script."""
    pairs = {
        "1 process": ("launch", "lightning_hydra"),
        "2 ranks": ("launch devices=2", "torchrun lightning_hydra"),
    }
    found: dict[str, str] = {}
    for table in tables:
        ranks = table.title.split(":")[0]
        if ranks not in pairs or "first training step" not in table.title:
            continue
        medians = {row.variant: row.median for row in table.rows}
        ours, theirs = pairs[ranks]
        if theirs in medians:
            ratio = medians[ours] / medians[theirs]
            met = "yes" if ratio < 1 else "NO"
            found[f"{ranks}: first step, {ours} / {theirs} (target < 1)"] = f"{ratio:.3f}x, met: {met}"
    return found


def lightning_available() -> bool:
    try:
        import lightning.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def run(quick: bool = False) -> Report:
    """Every program, interleaved; then the start-up pieces and bad input, interleaved."""
    repetitions = 1 if quick else 5
    load_before = os.getloadavg()[0]  # other work on the machine inflates every number
    lightning = lightning_available()
    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    failures: list[str] = []
    try:
        tables = measure_training(workdir, repetitions, not quick, lightning, failures)
        short_tables, checks = measure_short_commands(workdir, 2 if quick else 5, lightning)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    settings = {
        "mode": "quick (smoke run, numbers not meaningful)" if quick else "full",
        "load average before / after (1 min)": f"{load_before:.2f} / {os.getloadavg()[0]:.2f}",
        **versus_lightning(tables),
        **checks,
        "failed runs (each run again once)": "; ".join(failures) or "none",
    }
    return Report(NAME, TITLE, [*tables, *short_tables], NOTES, settings)


NOTES = [
    "Work: the built-in example for 1 epoch (3200 training samples, batch 64: 50 steps on 1 process, 25 per "
    "rank on 2), validation, TensorBoard scalars and a checkpoint, the dataset read from a file that the "
    "warm-up round generated. `launch` and Lightning run with their defaults (sanity validation, progress "
    "bar, model summary, TensorBoard logger, checkpointing).",
    "First step: each program appends time.time() in its first training_step to the file named by "
    "STARTUP_STAMP; the benchmark reads time.time() just before starting the command. With 2 ranks the "
    "later rank's first step counts. End: the command's exit.",
    "Variants run interleaved (one run of each per round, order rotated every round) after one warm-up "
    "round that is not recorded; medians over repetitions, with min and max; ratios against the "
    "hand-written script (1 process) and torchrun of the hand-written DDP script (2 ranks).",
    "Targets: `launch` reaches the first training step no later than the hand-written script (ratio <= "
    "1.00), for 1 process and for 2 ranks. Thread counts are each tool's own choice (torchrun and launch set "
    "OMP_NUM_THREADS=1 for 2 ranks).",
    "Python runs with its default bytecode cache (PYTHONDONTWRITEBYTECODE removed from the environment), "
    "so that the warm-up round's compiled modules serve every measured run, as on a user's machine.",
    "Start-up pieces: short commands timed alone (interpreter, Hydra composition through `launch --cfg job`, "
    "torch, the first optimizer, which makes torch import torch._dynamo, trainer_core, Lightning), to show "
    "where the time to the first step goes.",
    "Bad input: `launch` with a config error, start to exit (code 2 checked). A bad override must fail in "
    "under 1 s and an impossible resource request in seconds (5 s here), in every repetition.",
]
