"""The benchmark runner: `python -m bench [NAME ...] [--quick] [--runs N] [--out DIR]`.

A benchmark is a module in `bench/` that defines, at top level, `NAME = "..."`, `TITLE = "..."` and
`def run(quick: bool = False) -> bench.common.Report`. Adding the file registers it: the runner finds such
modules by reading their source (so scripts meant for `torchrun`, like `gpu_ddp.py`, are never imported),
runs them one after another, writes each one's `<NAME>.md`/`.json`, then the suite's `summary.md` and
`summary.png` (see `bench.report`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS_DIR, Report, combine_runs
from bench.report import write_summary

_NAME = re.compile(r"^NAME\s*=\s*[\"']([\w-]+)[\"']", re.MULTILINE)
_RUN = re.compile(r"^def run\(", re.MULTILINE)
BENCH_DIR = Path(__file__).resolve().parent


def discover(folder: Path = BENCH_DIR) -> dict[str, str]:
    """Benchmark name -> module, for every `bench/*.py` with a top-level `NAME` and `def run(`."""
    found: dict[str, str] = {}
    for path in sorted(folder.glob("*.py")):
        source = path.read_text()
        name = _NAME.search(source)
        if name and _RUN.search(source):
            found[name.group(1)] = f"{folder.name}.{path.stem}"
    return found


def _parse(argv: list[str], benchmarks: dict[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {sorted(benchmarks)})")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: tiny sizes, numbers not meaningful"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output directory (default {RESULTS_DIR}; a --quick run defaults to a temporary directory, "
        "so that its meaningless numbers never replace the committed results)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="separate runs of each benchmark, each in a new process; the report shows medians of the runs",
    )
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="measure nothing: rebuild summary.md and summary.png from the <name>.json files in the output "
        "directory",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else RESULTS_DIR
    return args


def main(argv: list[str] | None = None) -> int:
    benchmarks = discover()
    args = _parse(sys.argv[1:] if argv is None else argv, benchmarks)
    unknown = [name for name in args.names if name not in benchmarks]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(benchmarks)}", file=sys.stderr)
        return 2
    for name in [] if args.summary_only else args.names or list(benchmarks):
        started = time.perf_counter()
        if args.runs > 1:
            report = combine_runs([_separate_run(name, args.quick) for _ in range(args.runs)])
        else:
            report = importlib.import_module(benchmarks[name]).run(quick=args.quick)
        markdown, data = report.write(args.out)
        print(report.markdown())
        print(f"[{name}: {time.perf_counter() - started:.0f} s; wrote {markdown} and {data}]")
    # The summary covers every result in the directory: running one benchmark keeps the others' rows.
    reports = [Report.from_json(json.loads((args.out / f"{name}.json").read_text()))
               for name in sorted(benchmarks) if (args.out / f"{name}.json").is_file()]  # fmt: skip
    summary, chart = write_summary(reports, args.out)
    print(summary.read_text())
    print(f"[suite: wrote {summary}" + (f" and {chart}]" if chart else "; no chart without matplotlib]"))
    return 0


def _separate_run(name: str, quick: bool) -> Report:
    """One run of benchmark `name` in a new process, read back from the report it wrote."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as out:
        command = [sys.executable, "-m", "bench", name, "--out", out, *(["--quick"] if quick else [])]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return Report.from_json(json.loads((Path(out) / f"{name}.json").read_text()))


if __name__ == "__main__":
    sys.exit(main())
