"""`_target_` resolution, run ids and manifests, resume merging, and the status table (no subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from launcher import rundir, status
from launcher.compose import _resume_config
from launcher.errors import ConfigError
from launcher.targets import check_arguments, import_target, instantiate


def test_import_target_names_module_and_sys_path() -> None:
    with pytest.raises(ConfigError) as error:
        import_target("no_such_pkg.models.Net", "model._target_")
    message = str(error.value)
    assert "model._target_=no_such_pkg.models.Net" in message and "sys.path" in message


def test_import_target_suggests_a_close_attribute() -> None:
    with pytest.raises(ConfigError, match="Did you mean: OrderedDict"):
        import_target("collections.OrderedDcit", "model._target_")


def test_check_arguments_rejects_unknown_arguments_with_suggestions() -> None:
    spec = {"_target_": "fractions.Fraction", "numeratr": 1}
    with pytest.raises(ConfigError, match=r"model\.numeratr.*Did you mean: numerator"):
        check_arguments(spec, "model")
    check_arguments({"_target_": "fractions.Fraction", "numerator": 1}, "model")


def test_instantiate_builds_nested_targets() -> None:
    spec = {
        "_target_": "collections.OrderedDict",
        "inner": {"_target_": "fractions.Fraction", "numerator": 3},
    }
    built = instantiate(spec)
    assert built["inner"] == 3


def test_new_run_ids_are_unique_and_sortable() -> None:
    ids = {rundir.new_run_id() for _ in range(50)}
    assert len(ids) == 50


def test_existing_run_dir_lists_the_runs(tmp_path: Path) -> None:
    (tmp_path / "exp" / "a").mkdir(parents=True)
    (tmp_path / "exp" / "a" / "config.yaml").write_text("{}")
    assert rundir.existing_run_dir(tmp_path, "exp", "a") == tmp_path / "exp" / "a"
    with pytest.raises(ConfigError, match=r"run\.id=b: .*runs there: a"):
        rundir.existing_run_dir(tmp_path, "exp", "b")


def test_manifest_is_written_atomically_and_updated(tmp_path: Path) -> None:
    manifest = rundir.new_manifest({"run": {"id": "x"}, "seed": 1}, "x")
    rundir.write_manifest(tmp_path, manifest)
    rundir.update_manifest(tmp_path, status="completed", last_committed_step=7)
    stored = json.loads((tmp_path / "run.json").read_text())
    assert stored["status"] == "completed" and stored["last_committed_step"] == 7
    assert stored["requeue_count"] == 0 and stored["slurm_job_ids"] == []
    assert [path.name for path in tmp_path.iterdir()] == ["run.json"]


def test_config_hash_ignores_the_run_id() -> None:
    first = rundir.config_hash({"seed": 1, "run": {"id": "a", "root": "r"}})
    assert first == rundir.config_hash({"seed": 1, "run": {"id": "b", "root": "r"}})
    assert first != rundir.config_hash({"seed": 2, "run": {"id": "a", "root": "r"}})


def test_resume_keeps_the_stored_config_except_what_the_command_line_overrides(tmp_path: Path) -> None:
    stored = {
        "seed": 1,
        "run": {"id": "a", "root": "/old"},
        "model": {"lr": 0.5},
        "trainer": {"max_epochs": 1},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    composed = {
        "seed": 9,
        "run": {"id": "a", "root": "/new"},
        "model": {"lr": 0.1},
        "trainer": {"max_epochs": 4},
    }
    merged = _resume_config(tmp_path, composed, ["run.id=a", "trainer.max_epochs=4"])
    assert merged["trainer"]["max_epochs"] == 4
    assert merged["model"]["lr"] == 0.5 and merged["seed"] == 1
    assert merged["run"]["root"] == "/new"


def test_status_table_shows_each_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for job, state in (("0", "completed"), ("1", "failed")):
        run_dir = tmp_path / "sweep" / job
        run_dir.mkdir(parents=True)
        rundir.write_manifest(
            run_dir, {**rundir.new_manifest({}, job), "status": state, "last_committed_step": 5}
        )
    status.main([str(tmp_path / "sweep")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["run", "status"]
    assert lines[1].split()[:2] == ["0", "completed"] and lines[2].split()[:2] == ["1", "failed"]
    assert lines[1].split()[6] == "5"
