"""Bad overrides and impossible requests: `launch` exits 2, names the key, and starts nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import explain, launch

BAD_INPUTS = [
    (["model.lrr=0.1"], ["model.lrr", "Did you mean: lr"]),
    (["trainer.devcies=2"], ["trainer.devcies", "devices"]),
    (["trainer.max_epochs=abc"], ["trainer.max_epochs", "abc"]),
    (["trainer.precision=16-mixed", "trainer.accelerator=cpu"], ["trainer.precision", "16-mixed"]),
    (["trainer.accelerator=gpu"], ["trainer.accelerator", "GPU"]),
    (["trainer.num_nodes=2"], ["trainer.num_nodes", "+cluster=slurm"]),
    (["trainer.devices=0"], ["trainer.devices"]),
    (["model._target_=no_such_package.Model"], ["model._target_", "no_such_package", "sys.path"]),
    (["model.hidden_size=3", "~model.hidden"], ["model.hidden_size"]),
    (["run.id=does-not-exist"], ["run.id=does-not-exist", "runs there"]),
    (["model=no_such_model"], ["model/no_such_model"]),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("overrides", "expected"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_exits_2_naming_the_key(tmp_path: Path, overrides: list[str], expected: list[str]) -> None:
    result = launch(tmp_path, *overrides, timeout=50)
    assert result.returncode == 2, explain(result)
    for text in expected:
        assert text in result.stderr, explain(result)
    assert not list(tmp_path.rglob("config.yaml")), "nothing may start after a config error"


@pytest.mark.timeout(60)
def test_unknown_run_id_lists_the_existing_runs(tmp_path: Path) -> None:
    existing = tmp_path / "runs" / "default" / "2020-01-01_00-00-00_abcd"
    existing.mkdir(parents=True)
    (existing / "config.yaml").write_text("seed: 1\n")
    result = launch(tmp_path, "run.id=2020-01-01_00-00-00_abce", timeout=50)
    assert result.returncode == 2, explain(result)
    assert "2020-01-01_00-00-00_abcd" in result.stderr
