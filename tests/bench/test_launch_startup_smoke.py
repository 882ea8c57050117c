"""Smoke test of the start-up benchmark: `python -m bench launch_startup --quick` runs every program once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_quick_launch_startup_run_writes_its_tables(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "launch_startup", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    markdown = (tmp_path / "launch_startup.md").read_text()
    assert "ratio vs hand |" in markdown and "ratio vs torchrun hand_ddp |" in markdown
    report = json.loads((tmp_path / "launch_startup.json").read_text())
    tables = {table["title"]: table for table in report["tables"]}
    for ranks, launch, baseline in (
        ("1 process", "launch", "hand"),
        ("2 ranks", "launch devices=2", "torchrun hand_ddp"),
    ):
        first = {row["variant"]: row for row in tables[f"{ranks}: to the first training step"]["rows"]}
        end = {row["variant"]: row for row in tables[f"{ranks}: to the end of 1 epoch"]["rows"]}
        assert {launch, baseline} <= set(first) == set(end)
        assert first[baseline]["ratio"] == pytest.approx(1.0)
        assert first[launch]["target"] == 1.0
        for name, row in first.items():
            # Each program trains after it starts and exits after its first step.
            assert 0 < row["median_s"] < end[name]["median_s"], name
    bad = {row["variant"]: row for row in tables["bad config input: start to exit with code 2"]["rows"]}
    assert any("trainer.devicez=2" in name for name in bad) and "python -c pass" in bad
    pieces = {row["variant"]: row for row in tables["start-up pieces, each alone"]["rows"]}
    assert {"import torch", "import trainer_core"} <= set(pieces)
    for row in [*bad.values(), *pieces.values()]:
        assert row["median_s"] > 0, row["variant"]
    assert any("every repetition under 1 s" in key for key in report["settings"])
