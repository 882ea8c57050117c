"""SimpleProfiler's table and output file, the pass-through profiler, and resolving Trainer(profiler=...)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_core.errors import MisconfigurationError
from trainer_core.profiler import PassThroughProfiler, Profiler, SimpleProfiler, resolve_profiler


def _busy(iterations: int) -> int:
    return sum(i * i for i in range(iterations))


def _table(summary: str) -> dict[str, list[str]]:
    rows = [line.split("|") for line in summary.splitlines()[3:]]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows}


def test_counts_calls_and_sorts_actions_by_total_time() -> None:
    profiler = SimpleProfiler()
    for _ in range(3):
        with profiler.profile("quick"):
            pass
    with profiler.profile("slow"):
        _busy(200_000)
    profiler.start("manual")
    profiler.stop("manual")
    table = _table(profiler.summary())
    assert list(table)[:2] == ["Wall time", "slow"]
    assert table["quick"][0] == "3"
    assert table["manual"][0] == "1"
    assert float(table["slow"][1]) > float(table["quick"][1])
    assert 0.0 < float(table["slow"][3]) <= 100.0


def test_stop_without_start_and_double_start_are_errors() -> None:
    profiler = SimpleProfiler()
    with pytest.raises(ValueError, match="'x' was stopped without being started"):
        profiler.stop("x")
    profiler.start("y")
    with pytest.raises(ValueError, match="'y' was started twice"):
        profiler.start("y")


def test_an_exception_inside_profile_still_records_the_action() -> None:
    profiler = SimpleProfiler()
    with pytest.raises(RuntimeError), profiler.profile("failing"):
        raise RuntimeError("boom")
    assert _table(profiler.summary())["failing"][0] == "1"


def test_describe_writes_the_report_to_dirpath_and_filename(tmp_path: Path) -> None:
    profiler = SimpleProfiler(dirpath=tmp_path, filename="perf")
    profiler.setup(stage="fit", local_rank=0)
    with profiler.profile("training_step"):
        pass
    profiler.describe()
    written = (tmp_path / "fit-perf.txt").read_text()
    assert "training_step" in written and "Total (s)" in written


def test_describe_uses_the_log_dir_when_no_dirpath_is_given(tmp_path: Path) -> None:
    profiler = SimpleProfiler(filename="perf")
    profiler.setup(stage="test", local_rank=1, log_dir=str(tmp_path))
    with profiler.profile("test_step"):
        pass
    profiler.describe()
    assert (tmp_path / "test-perf-1.txt").is_file()


def test_describe_without_filename_logs_the_report(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="trainer_core.profiler")
    profiler = SimpleProfiler()
    with profiler.profile("validation_step"):
        pass
    profiler.describe()
    assert "validation_step" in caplog.text
    assert profiler.output_path() is None


def test_empty_profiler_reports_nothing(tmp_path: Path) -> None:
    profiler = SimpleProfiler(dirpath=tmp_path, filename="perf")
    assert profiler.summary() == ""
    profiler.describe()
    assert list(tmp_path.iterdir()) == []


def test_pass_through_records_nothing() -> None:
    profiler = PassThroughProfiler()
    with profiler.profile("anything"):
        pass
    profiler.start("a")
    profiler.stop("b")
    assert profiler.summary() == ""


def test_resolve_profiler() -> None:
    assert isinstance(resolve_profiler(None), PassThroughProfiler)
    assert isinstance(resolve_profiler("simple"), SimpleProfiler)
    mine: Profiler = SimpleProfiler(filename="x")
    assert resolve_profiler(mine) is mine
    with pytest.raises(MisconfigurationError, match=r"profiler='advanced'.*profiler=\"simple\""):
        resolve_profiler("advanced")
