"""The suite's overview: one Markdown table of every benchmark's ratios and a PNG chart of them.

`python -m bench` writes `summary.md` and `summary.png` beside each benchmark's own `.md`/`.json` files. The
chart needs matplotlib (the optional extra `pip install hpc-launch[bench]`); without it only the table is
written and the Markdown says so.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.common import Report, Row, machine_header

SUMMARY_NAME = "summary"


def summary_markdown(reports: list[Report], chart: Path | None) -> str:
    """Every measured row with its median, min/max and ratio against its table's baseline."""
    lines = ["# Benchmark suite: ratios against the hand-written baseline", ""]
    lines += [f"- {key}: {value}" for key, value in machine_header().items()]
    lines += [
        "- ratio: the variant's median over the baseline's median, measured side by side (lower is better)",
        "",
        "| benchmark | measurement | variant | median (ms) | min-max (ms) | ratio | target | met |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for report in reports:
        for table in report.tables:
            for row in table.rows:
                if row.variant == table.baseline:
                    continue
                lines.append(_row(report.name, table.title, row))
    lines.append("")
    if chart is not None:
        lines += [f"![ratios]({chart.name})", ""]
    else:
        lines += ["(No chart: matplotlib is not installed; `pip install hpc-launch[bench]` adds it.)", ""]
    lines.append("Each benchmark's own file (`<name>.md`) has the baselines' absolute times and the method.")
    return "\n".join(lines) + "\n"


def _row(benchmark: str, measurement: str, row: Row) -> str:
    target = f"<= {row.target:.2f}x" if row.target is not None else ""
    met = {True: "yes", False: "NO", None: ""}[row.meets_target]
    spread = f"{1e3 * min(row.samples):.3f}-{1e3 * max(row.samples):.3f}"
    return (
        f"| {benchmark} | {measurement} | {row.variant} | {1e3 * row.median:.3f} | {spread} | "
        f"{row.ratio:.3f}x | {target} | {met} |"
    )


def write_chart(reports: list[Report], path: Path) -> Path | None:
    """A horizontal bar per (measurement, variant) ratio, a line at 1.0 (the baseline) and the targets.

    Returns None when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a cluster node
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    bars = [
        (f"{table.title} | {row.variant}", row)
        for report in reports
        for table in report.tables
        for row in table.rows
        if row.variant != table.baseline and math.isfinite(row.ratio)
    ]
    if not bars:
        return None
    figure, axes = plt.subplots(figsize=(11, 0.35 * len(bars) + 1.6))
    positions = list(range(len(bars)))[::-1]
    colours = ["tab:blue" if "trainer_core" in label else "tab:gray" for label, _ in bars]
    axes.barh(positions, [row.ratio for _, row in bars], color=colours)
    for position, (_, row) in zip(positions, bars):
        axes.annotate(f"{row.ratio:.2f}x", (row.ratio, position), xytext=(3, -3), textcoords="offset points")
        if row.target is not None:
            axes.plot([row.target], [position], marker="|", color="tab:red", markersize=14)
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_yticks(positions, [label for label, _ in bars], fontsize=8)
    axes.set_xlabel("median time / baseline median time (lower is better; red mark: target)")
    header = machine_header()
    axes.set_title(f"{header['machine']}, torch {header['torch']}, {header['date']}", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_summary(reports: list[Report], out_dir: Path) -> tuple[Path, Path | None]:
    """Write `summary.md` (and `summary.png` when matplotlib is there) to `out_dir`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chart = write_chart(reports, out_dir / f"{SUMMARY_NAME}.png")
    markdown = out_dir / f"{SUMMARY_NAME}.md"
    markdown.write_text(summary_markdown(reports, chart))
    return markdown, chart
