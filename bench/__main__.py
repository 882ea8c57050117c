"""The benchmark runner: `python -m bench [NAME ...] [--quick] [--out DIR]`.

A benchmark is a module with `NAME`, `TITLE` and `run(quick: bool) -> bench.common.Report`; register it in
`BENCHMARKS` below to have it run by default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from bench.common import RESULTS_DIR, Report

BENCHMARKS: dict[str, str] = {
    "single_process": "bench.single_process",
}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {sorted(BENCHMARKS)})")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: tiny sizes, numbers not meaningful"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help=f"output directory (default {RESULTS_DIR})"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in args.names or list(BENCHMARKS):
        started = time.perf_counter()
        report: Report = importlib.import_module(BENCHMARKS[name]).run(quick=args.quick)
        markdown, data = report.write(args.out)
        print(report.markdown())
        print(f"[{name}: {time.perf_counter() - started:.0f} s; wrote {markdown} and {data}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
