"""The Slurm backend without a cluster: snapshots, job setup, sacct, sweep ids, failure logs, status."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from launcher import cli, rundir, slurm_submit, status
from launcher.config import JobConfig, SlurmConfig
from launcher.errors import ConfigError
from launcher.failure_logs import failing_rank, failure_report, tail_from_traceback
from launcher.slurm_job import SlurmRankJob, current_job_id
from launcher.snapshot import python_path, take_snapshot, user_packages
from launcher.validate import job_from_dict
from slurm import accounting
from slurm.accounting import expand_array_ids, parse_sacct, query_jobs

TARGETS = {
    "model": {"_target_": "launcher.example.Classifier"},
    "data": {"_target_": "launcher.example.BlobsDataModule"},
}


def write_package(root: Path, name: str, body: str = "VALUE = 1\n") -> Path:
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    return package


def test_snapshot_is_content_addressed_and_a_change_makes_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_root = tmp_path / "src"
    package = write_package(source_root, "snapmod_a")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.pyc").write_bytes(b"cache")
    monkeypatch.syspath_prepend(str(source_root))

    first = take_snapshot(tmp_path / "run", ["snapmod_a"])
    again = take_snapshot(tmp_path / "run", ["snapmod_a"])
    (package / "__init__.py").write_text("VALUE = 2\n")
    changed = take_snapshot(tmp_path / "run", ["snapmod_a"])

    assert first == again and first.parent == tmp_path / "run" / "code"
    assert (first / "snapmod_a" / "__init__.py").read_text() == "VALUE = 1\n"
    assert not (first / "snapmod_a" / "__pycache__").exists()
    assert changed != first and (changed / "snapmod_a" / "__init__.py").read_text() == "VALUE = 2\n"
    assert sorted(p.name for p in (tmp_path / "run" / "code").iterdir()) == sorted([first.name, changed.name])


def test_user_packages_are_the_targets_outside_installed_libraries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_package(tmp_path, "my_user_models")
    monkeypatch.syspath_prepend(str(tmp_path))
    targets = [
        "my_user_models.nets.Net",
        "yaml.SafeLoader",
        "launcher.example.Classifier",
        "my_user_models.X",
    ]

    assert user_packages(targets) == ["my_user_models"]


def test_job_setup_puts_the_snapshot_first_and_the_users_lines_last(tmp_path: Path) -> None:
    cluster = SlurmConfig(cpus_per_task=3, setup=["module load cuda"])
    lines = slurm_submit.job_setup(cluster, tmp_path / "code" / "abc")

    assert lines[0].startswith(f"export PYTHONPATH={tmp_path / 'code' / 'abc'}:{Path.cwd()}")
    assert "export PYTHONSAFEPATH=1" in lines
    assert "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}" in lines
    assert lines[-1] == "module load cuda"
    assert python_path(tmp_path, tmp_path / "cwd").split(":")[:2] == [str(tmp_path), str(tmp_path / "cwd")]


def test_executor_writes_the_sbatch_script_into_the_run_directory(tmp_path: Path) -> None:
    job = job_from_dict({**TARGETS, "trainer": {"devices": 2}, "cluster": {"partition": "debug"}})
    job.run.experiment = "exp"
    executor = slurm_submit.make_job_executor(tmp_path / "slurm", job, tmp_path / "code" / "h")
    script = executor._executor._make_submission_file_text("<COMMAND>", "uid")

    # srun gives every task (rank) its own stdout and stderr file.
    assert f"--output {tmp_path}/slurm/%j_%t_log.out --error {tmp_path}/slurm/%j_%t_log.err" in script
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --job-name=exp" in script
    assert f"export PYTHONPATH={tmp_path}/code/h:" in script
    assert script.index("export PYTHONPATH") < script.index("<COMMAND>")


def test_cluster_settings_that_cannot_work_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.time_min=0"):
        job_from_dict({**TARGETS, "cluster": {"time_min": 0}})
    with pytest.raises(ConfigError, match=r"cluster\.signal='NOPE'"):
        job_from_dict({**TARGETS, "cluster": {"signal": "NOPE"}})
    with pytest.raises(ConfigError, match=r"cluster\.additional_parameters\.nodes"):
        job_from_dict({**TARGETS, "cluster": {"additional_parameters": {"nodes": 3}}})
    assert isinstance(JobConfig().cluster, type(None))


def test_sacct_rows_give_state_nodes_and_requeue_counts() -> None:
    text = "\n".join(
        [
            "101|REQUEUED|n1|2026-01-01T10:00:00|2026-01-01T10:01:00|0:15",
            "101|TIMEOUT|n[1-2]|2026-01-01T10:02:00|2026-01-01T10:03:00|0:0",
            "101|RUNNING|n[1-2]|2026-01-01T10:04:00|Unknown|0:0",
            "102_0|CANCELLED by 0|n1|2026-01-01T10:00:00|2026-01-01T10:00:05|0:0",
            "102_[1-2,4%2]|PENDING|None assigned|Unknown|Unknown|0:0",
            "not|a|row",
        ]
    )
    jobs = parse_sacct(text)

    assert jobs["101"].state == "RUNNING" and jobs["101"].is_active
    assert (jobs["101"].runs, jobs["101"].requeues, jobs["101"].timeouts) == (3, 1, 1)
    assert jobs["101"].nodes == "n[1-2]" and jobs["101"].start == "2026-01-01T10:04:00"
    assert jobs["102_0"].state == "CANCELLED" and jobs["102_0"].is_final
    assert jobs["102_4"].state == "PENDING"
    assert expand_array_ids("7_[0-2,5]") == ["7_0", "7_1", "7_2", "7_5"]
    assert expand_array_ids("7_3") == ["7_3"]


def test_query_jobs_asks_for_the_arrays_and_returns_only_the_wanted_ids() -> None:
    asked: list[list[str]] = []

    def fake_sacct(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        asked.append(args)
        out = "9_0|COMPLETED|n1|a|b|0:0\n9_[1-3]|PENDING|None assigned|Unknown|Unknown|0:0\n"
        return subprocess.CompletedProcess(args, 0, out, "")

    found = query_jobs(["9_1", "9_0"], run=fake_sacct)

    assert asked[0][asked[0].index("-j") + 1] == "9,9_0,9_1"
    assert sorted(found) == ["9_0", "9_1"] and found["9_1"].state == "PENDING"


def test_the_failing_rank_and_its_traceback_are_found_in_the_logs(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "rank0.log").write_text(
        "[rank0] ERROR: Rank 0 stops because another rank failed first: rank 1 (n1, pid 5): ValueError: x\n"
    )
    (tmp_path / "logs" / "rank1.log").write_text(
        "[rank1] ERROR: Rank 1 failed; stopping every rank of the job.\n"
    )
    slurm_dir = tmp_path / "slurm"
    slurm_dir.mkdir()
    (slurm_dir / "55_0_log.err").write_text("Traceback (most recent call last):\nGlooError: peer gone\n")
    (slurm_dir / "55_1_log.err").write_text(
        "noise\nTraceback (most recent call last):\n  old\nTraceback (most recent call last):\n"
        '  File "m.py", line 3\nValueError: x\n'
    )
    manifest = {"slurm_job_ids": ["54", "55"], "slurm_folder": str(slurm_dir)}

    assert failing_rank(tmp_path) == 1
    report = failure_report(tmp_path, manifest)
    assert report is not None and report.rank == 1 and report.log_path == slurm_dir / "55_1_log.err"
    assert report.lines == ["Traceback (most recent call last):", '  File "m.py", line 3', "ValueError: x"]
    assert tail_from_traceback("\n".join(str(i) for i in range(40))) == [str(i) for i in range(25, 40)]


def test_status_shows_slurm_state_and_the_failed_runs_error_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, job_id, state in (("0", "70_0", "completed"), ("1", "70_1", "running")):
        run_dir = tmp_path / "sweep" / name
        (run_dir / "logs").mkdir(parents=True)
        rundir.write_manifest(
            run_dir, {**rundir.new_manifest({}, name), "status": state, "slurm_job_ids": [job_id]}
        )
    (tmp_path / "sweep" / "1" / "logs" / "rank0.log").write_text("Traceback (most recent call last):\nBoom\n")
    sacct = "70_0|COMPLETED|n1|s0|e0|0:0\n70_1|REQUEUED|n2|s1|e1|0:0\n70_1|FAILED|n2|s2|e2|1:0\n"
    monkeypatch.setattr(
        accounting, "query_jobs", lambda ids: {k: v for k, v in parse_sacct(sacct).items() if k in ids}
    )

    status.main([str(tmp_path / "sweep")])
    out = capsys.readouterr().out.splitlines()

    assert out[0].split()[:3] == ["run", "status", "slurm"]
    assert out[1].split()[:4] == ["0", "completed", "COMPLETED", "0"]
    assert out[2].split()[:4] == ["1", "running", "FAILED", "1"] and out[2].split()[7:10] == [
        "70_1",
        "n2",
        "s2",
    ]
    failure = "\n".join(out[3:])
    assert "1: failed (job 70_1 FAILED, exit 1:0) on rank 0; error log:" in failure
    assert "  | Boom" in failure


def test_a_sweep_job_is_resubmitted_only_when_it_neither_completed_nor_is_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    states = {"1": "COMPLETED", "2": "RUNNING", "3": "FAILED"}
    monkeypatch.setattr(
        accounting, "query_jobs", lambda ids: {i: parse_sacct(f"{i}|{states[i]}|n1|s|e|0:0")[i] for i in ids}
    )
    cases = {"done": ("completed", []), "new": ("running", []), **{j: ("submitted", [j]) for j in states}}
    reasons = {}
    for name, (state, job_ids) in cases.items():
        run_dir = tmp_path / name
        rundir.write_manifest(run_dir, {"status": state, "slurm_job_ids": job_ids})
        reasons[name] = slurm_submit.reason_not_to_resubmit(run_dir)

    assert reasons == {
        "done": "completed",
        "new": None,
        "1": "completed as job 1",
        "2": "running as job 2",
        "3": None,
    }


def test_a_slurm_sweep_id_follows_its_overrides_and_a_local_one_is_new(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omegaconf import OmegaConf

    def sweep_id_for(cluster: object, task: list[str]) -> str:
        monkeypatch.setattr(cli, "_sweep_id", [])
        root = OmegaConf.create({"cluster": cluster, "hydra": {"overrides": {"task": task}}})
        return cli.sweep_id(_root_=root)

    slurm_sweep = ["+cluster=slurm", "seed=1,2"]
    assert sweep_id_for({"partition": None}, slurm_sweep) == sweep_id_for({"partition": None}, slurm_sweep)
    assert sweep_id_for({}, slurm_sweep).startswith("sweep-")
    assert sweep_id_for({}, slurm_sweep) != sweep_id_for({}, ["+cluster=slurm", "seed=1,3"])
    assert sweep_id_for({}, [*slurm_sweep, "hydra.verbose=true"]) == sweep_id_for({}, slurm_sweep)
    assert not sweep_id_for(None, ["seed=1,2"]).startswith("sweep-")


def test_the_job_callable_pickles_and_requeues_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    job = pickle.loads(pickle.dumps(SlurmRankJob("/runs/x")))
    delayed = job.checkpoint()

    assert isinstance(delayed.function, SlurmRankJob) and delayed.function.run_dir == "/runs/x"
    assert (
        current_job_id({"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "2"})
        == "10_2"
    )
    assert current_job_id({"SLURM_JOB_ID": "12"}) == "12"
    assert "launcher.slurm_job" in sys.modules
