"""The suite's registration by file and its overview: summary.md with every ratio, summary.png chart."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import discover
from bench.common import Report, Table
from bench.report import write_summary


def test_a_module_with_name_and_run_registers_itself_and_scripts_are_not_imported(tmp_path: Path) -> None:
    folder = tmp_path / "mybench"
    folder.mkdir()
    (folder / "launch_startup.py").write_text(
        'NAME = "launch_startup"\nTITLE = "t"\n\ndef run(quick=False): ...\n'
    )
    (folder / "helper.py").write_text("def run(quick=False): ...\n")  # no NAME: not a benchmark
    (folder / "script.py").write_text('raise SystemExit("never imported")\nNAME = "x"\n')  # no run()
    assert discover(folder) == {"launch_startup": "mybench.launch_startup"}
    assert discover()["single_process"] == "bench.single_process"


def report(name: str, baseline_s: float, trainer_s: float, target: float | None) -> Report:
    samples = {"hand": [baseline_s, baseline_s * 1.1], "trainer_core": [trainer_s, trainer_s]}
    targets = {"trainer_core": target} if target is not None else None
    table = Table.from_samples(f"{name}: step", "note", samples, "hand", targets)
    return Report(name, f"{name} title", [table])


def test_summary_lists_every_non_baseline_row_with_its_ratio_and_target(tmp_path: Path) -> None:
    reports = [report("cpu", 0.001, 0.0011, 1.15), report("ddp", 0.002, 0.003, None)]
    markdown, chart = write_summary(reports, tmp_path)
    text = markdown.read_text()
    assert "- torch: " in text and "- machine: " in text and "- date: " in text
    rows = [line for line in text.splitlines() if line.startswith("| cpu") or line.startswith("| ddp")]
    assert len(rows) == 2  # the baselines are the denominators, not rows
    # hand median = 1.05 ms, trainer 1.1 ms -> 1.048x, within 1.15x
    assert "| cpu | cpu: step | trainer_core | 1.100 | 1.100-1.100 | 1.048x | <= 1.15x | yes |" in rows
    assert "| ddp | ddp: step | trainer_core | 3.000 | 3.000-3.000 | 1.429x |  |  |" in rows
    pytest.importorskip("matplotlib")
    assert chart is not None and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"![ratios]({chart.name})" in text


def test_a_summary_rebuilt_from_the_written_json_files_has_every_benchmark(tmp_path: Path) -> None:
    from bench.__main__ import main

    report("single_process", 0.001, 0.00105, 1.15).write(tmp_path)
    report("ddp_cpu", 0.002, 0.003, 1.15).write(tmp_path)
    assert main(["--summary-only", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| single_process | single_process: step | trainer_core |" in summary
    assert "| ddp_cpu | ddp_cpu: step | trainer_core |" in summary
    # ratios and verdicts computed again from the samples: 0.003 over the median of 0.002 and 0.0022
    assert f"{0.003 / 0.0021:.3f}x" in summary and "NO" in summary


def test_running_one_benchmark_keeps_the_other_results_in_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.__main__ as runner

    (tmp_path / "fake_bench.py").write_text(
        "from tests.bench.test_bench_report import report\n"
        'NAME = "fake"\nTITLE = "t"\n\n'
        'def run(quick=False):\n    return report("fake", 0.001, 0.0012, None)\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(runner, "discover", lambda: {"fake": "fake_bench", "ddp_cpu": "bench.ddp_cpu"})
    out = tmp_path / "results"
    report("ddp_cpu", 0.002, 0.003, 1.15).write(out)  # an earlier run's result
    assert runner.main(["fake", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "| fake | fake: step | trainer_core |" in summary
    assert "| ddp_cpu | ddp_cpu: step | trainer_core |" in summary
