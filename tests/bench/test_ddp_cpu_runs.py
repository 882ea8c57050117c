"""bench ddp_cpu's runs: every rank writes its result and exits 0; a run that lost a rank is run once more."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import ddp_cpu


@pytest.mark.timeout(300)
def test_a_quick_hand_ddp_run_ends_every_rank_cleanly_with_its_result() -> None:
    notes: list[str] = []
    timings = ddp_cpu.run_once("hand_ddp", "tiny", quick=True, notes=notes)
    assert timings["steady"] > 0 and timings["with_epoch_ends"] > 0
    assert notes == []  # both ranks exited 0: no teardown abort after the results were written


@pytest.mark.timeout(120)
def test_ranks_that_fail_before_writing_make_the_run_fail_naming_them() -> None:
    with pytest.raises(ddp_cpu.RunFailed, match=r"(?s)rank\(s\) \[0, 1\] wrote no result.*KeyError"):
        ddp_cpu.run_once("hand_ddp", "no_such_workload", quick=True, notes=[])


def test_a_failed_run_is_recorded_and_run_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes: list[object] = [
        ddp_cpu.RunFailed("hand_ddp on tiny: rank(s) [1] wrote no result\nlog"),
        {"steady": 1.0},
    ]

    def run_once(variant: str, workload: str, quick: bool, notes: list[str]) -> dict[str, float]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[return-value]

    monkeypatch.setattr(ddp_cpu, "run_once", run_once)
    failures: list[str] = []
    assert ddp_cpu.run_job("hand_ddp", "tiny", True, failures) == {"steady": 1.0}
    assert failures == ["hand_ddp on tiny: rank(s) [1] wrote no result"]


def test_a_run_that_fails_twice_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_once(variant: str, workload: str, quick: bool, notes: list[str]) -> dict[str, float]:
        raise ddp_cpu.RunFailed(f"{variant} on {workload}: rank(s) [0] wrote no result")

    monkeypatch.setattr(ddp_cpu, "run_once", run_once)
    failures: list[str] = []
    with pytest.raises(ddp_cpu.RunFailed):
        ddp_cpu.run_job("trainer_core", "tiny", True, failures)
    assert failures == ["trainer_core on tiny: rank(s) [0] wrote no result"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < ddp_cpu.RANKS, reason="needs a CPU per rank")
@pytest.mark.parametrize("rank", range(ddp_cpu.RANKS))
def test_each_rank_is_bound_to_a_cpu_of_its_own(rank: int) -> None:
    # In a child process: binding the test process itself would slow every later test.
    script = (
        "import os; from bench import ddp_cpu; "
        f"cpu = ddp_cpu.pin_to_core({rank}); print(cpu, sorted(os.sched_getaffinity(0)))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    cpu, bound = out.split(" ", 1)
    assert int(cpu) == sorted(os.sched_getaffinity(0))[rank]
    assert bound.strip() == f"[{cpu}]"
