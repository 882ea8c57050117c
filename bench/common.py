"""Benchmark machinery: interleaved repetitions, medians and ratios, the machine header, report files."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_T = TypeVar("_T")


def interleaved(variants: Mapping[str, Callable[[], _T]], repetitions: int) -> dict[str, list[_T]]:
    """Run every variant once per round, `repetitions` rounds, and collect what each run returns.

    Interleaving spreads slow phases of a shared machine (another process, thermal state) over all variants
    instead of penalising whichever ran during them; the order rotates each round so that no variant always
    runs first (after a cold cache) or last.
    """
    names = list(variants)
    samples: dict[str, list[_T]] = {name: [] for name in names}
    for round_index in range(repetitions):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(variants[name]())
    return samples


@dataclasses.dataclass
class Row:
    """One variant's samples (seconds) and how they compare with the baseline's."""

    variant: str
    samples: list[float]
    baseline_median: float
    target: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def ratio(self) -> float:
        return self.median / self.baseline_median

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    def as_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "median_s": self.median,
            "min_s": min(self.samples),
            "max_s": max(self.samples),
            "samples_s": self.samples,
            "ratio": self.ratio,
            "target": self.target,
            "meets_target": self.meets_target,
        }


@dataclasses.dataclass
class Table:
    """A measured quantity for several variants, with ratios against `baseline`."""

    title: str
    unit_note: str
    baseline: str
    rows: list[Row]

    @classmethod
    def from_samples(
        cls,
        title: str,
        unit_note: str,
        samples: Mapping[str, Sequence[float]],
        baseline: str,
        targets: Mapping[str, float] | None = None,
    ) -> Table:
        base = statistics.median(samples[baseline])
        targets = targets or {}
        rows = [Row(name, list(values), base, targets.get(name)) for name, values in samples.items()]
        return cls(title, unit_note, baseline, rows)

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            self.unit_note,
            "",
            f"| variant | median (ms) | min (ms) | max (ms) | ratio vs {self.baseline} | target | met |",
            "| --- | ---: | ---: | ---: | ---: | ---: | :---: |",
        ]
        for row in self.rows:
            target = f"<= {row.target:.2f}x" if row.target is not None else ""
            met = {True: "yes", False: "NO", None: ""}[row.meets_target]
            lines.append(
                f"| {row.variant} | {1e3 * row.median:.3f} | {1e3 * min(row.samples):.3f} | "
                f"{1e3 * max(row.samples):.3f} | {row.ratio:.3f}x | {target} | {met} |"
            )
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "note": self.unit_note,
            "baseline": self.baseline,
            "rows": [row.as_json() for row in self.rows],
        }


@dataclasses.dataclass
class Report:
    """What one benchmark measured: tables plus free-form notes on method, written as .md and .json."""

    name: str
    title: str
    tables: list[Table]
    notes: list[str] = dataclasses.field(default_factory=list)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def markdown(self) -> str:
        header = machine_header()
        parts = [f"# {self.title}", ""]
        parts += [f"- {key}: {value}" for key, value in header.items()]
        parts += [f"- {key}: {value}" for key, value in self.settings.items()]
        parts.append("")
        for table in self.tables:
            parts += [table.markdown(), ""]
        if self.notes:
            parts += ["### Method", ""] + [f"- {note}" for note in self.notes] + [""]
        return "\n".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "machine": machine_header(),
            "settings": self.settings,
            "tables": [table.as_json() for table in self.tables],
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        """The report that `as_json` wrote (its samples and targets; ratios are computed again)."""
        tables = []
        for table in data["tables"]:
            base = next(r for r in table["rows"] if r["variant"] == table["baseline"])["median_s"]
            rows = [Row(r["variant"], list(r["samples_s"]), base, r["target"]) for r in table["rows"]]
            tables.append(Table(table["title"], table["note"], table["baseline"], rows))
        return cls(data["name"], data["title"], tables, list(data["notes"]), dict(data["settings"]))

    def write(self, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
        """Write `<out_dir>/<name>.md` and `<name>.json`; return both paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        markdown, data = out_dir / f"{self.name}.md", out_dir / f"{self.name}.json"
        markdown.write_text(self.markdown())
        data.write_text(json.dumps(self.as_json(), indent=1) + "\n")
        return markdown, data


def combine_runs(reports: Sequence[Report]) -> Report:
    """One report from separate runs of one benchmark: each row's samples are the runs' medians, so its
    median is the median of the runs and its min and max their spread; targets apply to that median."""
    first = reports[0]
    tables = []
    for index, table in enumerate(first.tables):
        samples: dict[str, list[float]] = {row.variant: [] for row in table.rows}
        for report in reports:
            for row in report.tables[index].rows:
                samples.setdefault(row.variant, []).append(row.median)
        targets = {row.variant: row.target for row in table.rows if row.target is not None}
        note = f"{table.unit_note} Median of {len(reports)} separate runs (min, max: the runs' spread)."
        tables.append(Table.from_samples(table.title, note, samples, table.baseline, targets))
    notes = [
        f"{len(reports)} separate runs, each in a new process; every row shows the median of the runs' "
        "medians, with the lowest and highest run median as min and max.",
        *first.notes,
    ]
    return Report(first.name, first.title, tables, notes, {**first.settings, "runs": str(len(reports))})


def machine_header() -> dict[str, str]:
    """Where and with what the numbers were taken."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}",
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)",
        "lightning": _lightning_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _lightning_version() -> str:
    try:
        import lightning
    except ImportError:
        return "not installed"
    return str(lightning.__version__)
