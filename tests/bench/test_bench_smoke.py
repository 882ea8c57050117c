"""Smoke test of the benchmark runner: `python -m bench single_process --quick` writes its report files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_quick_single_process_run_writes_markdown_and_json(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "single_process", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    markdown = (tmp_path / "single_process.md").read_text()
    assert "ratio vs hand" in markdown and "ratio vs plain torch.save" in markdown
    report = json.loads((tmp_path / "single_process.json").read_text())
    variants = {row["variant"] for table in report["tables"] for row in table["rows"]}
    assert {"hand", "trainer_core", "plain torch.save", "plain torch.load"} <= variants
    for table in report["tables"]:
        baseline = next(row for row in table["rows"] if row["variant"] == table["baseline"])
        assert baseline["ratio"] == pytest.approx(1.0)
        assert all(row["ratio"] > 0 for row in table["rows"])


@pytest.mark.timeout(90)
def test_unknown_benchmark_name_is_refused(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "no_such_bench", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "single_process" in completed.stderr
    assert not list(tmp_path.iterdir())
