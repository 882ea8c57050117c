"""The real conf/ tree composed with Hydra, converted to the launcher's dataclasses, and validated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from launcher.cli import _register, conf_dir
from launcher.config import JobConfig, SlurmConfig, TrainerConfig
from launcher.errors import ConfigError
from launcher.validate import job_from_dict


@pytest.fixture
def compose_job() -> Iterator[Any]:
    _register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):

        def _compose(*overrides: str) -> dict[str, Any]:
            cfg = compose(config_name="config", overrides=list(overrides))
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]

        yield _compose
    GlobalHydra.instance().clear()


def test_default_config_matches_the_dataclass_defaults(compose_job: Any) -> None:
    job = job_from_dict(compose_job())
    assert job.trainer == TrainerConfig()
    assert job.cluster is None
    assert job.run.root == "runs" and job.run.id is None and job.run.experiment == "default"
    assert job.model["_target_"] == "launcher.example.Classifier"
    assert job.data["data_dir"] == "runs/data"


def test_slurm_group_is_appended_with_the_schema_defaults(compose_job: Any) -> None:
    job = job_from_dict(compose_job("+cluster=slurm", "cluster.partition=gpu"))
    assert job.cluster == SlurmConfig(partition="gpu")
    assert (
        job.cluster.signal == "USR2"
        and job.cluster.signal_delay_s == 120
        and job.cluster.max_num_timeout == 3
    )


def test_experiment_overlay_names_its_runs(compose_job: Any) -> None:
    job = job_from_dict(compose_job("experiment=wide_classifier"))
    assert job.run.experiment == "wide_classifier"
    assert job.model["hidden"] == 512
    assert job.callbacks.checkpoint.monitor == "val_acc"


def test_overrides_reach_the_dataclasses_with_their_types(compose_job: Any) -> None:
    job = job_from_dict(compose_job("trainer.devices=2", "trainer.limit_train_batches=5", "model.lr=0.1"))
    assert job.trainer.devices == 2
    assert job.trainer.limit_train_batches == 5 and isinstance(job.trainer.limit_train_batches, int)
    assert job.model["lr"] == 0.1


def plain(**changes: Any) -> dict[str, Any]:
    """A valid plain config with some sections changed."""
    data: dict[str, Any] = {
        "model": {"_target_": "launcher.example.Classifier"},
        "data": {"_target_": "launcher.example.BlobsDataModule"},
    }
    data.update(changes)
    return data


def test_a_plain_config_fills_in_defaults() -> None:
    job = job_from_dict(plain())
    assert isinstance(job, JobConfig) and job.seed == 1234 and job.trainer.max_epochs == 5


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"trainer": {"devcies": 2}}, ["trainer.devcies", "Did you mean: devices"]),
        ({"sed": 1}, ["sed", "Did you mean: seed"]),
        ({"trainer": {"max_epochs": "ten"}}, ["trainer.max_epochs='ten'", "int"]),
        ({"trainer": {"deterministic": 1}}, ["trainer.deterministic=1", "bool"]),
        ({"trainer": {"devices": 0}}, ["trainer.devices=0", "at least 1"]),
        ({"trainer": {"num_nodes": 2}}, ["trainer.num_nodes=2", "+cluster=slurm"]),
        (
            {"trainer": {"precision": "16-mixed", "accelerator": "cpu"}},
            ["trainer.precision=16-mixed", "bf16"],
        ),
        ({"trainer": {"precision": "16"}}, ["trainer.precision='16'", "16-mixed"]),
        ({"trainer": {"accelerator": "tpu"}}, ["trainer.accelerator='tpu'"]),
        ({"trainer": {"limit_val_batches": 1.5}}, ["trainer.limit_val_batches=1.5"]),
        ({"trainer": {"strategy": "single_device", "devices": 2}}, ["trainer.strategy=single_device"]),
        ({"logger": {"kind": "wandb"}}, ["logger.kind='wandb'"]),
        ({"callbacks": {"checkpoint": {"mode": "maximum"}}}, ["callbacks.checkpoint.mode", "max"]),
        ({"model": {"lr": 0.1}}, ["model._target_=None"]),
        ({"cluster": {"signal": "USR3"}}, ["cluster.signal='USR3'"]),
    ],
)
def test_invalid_configs_name_the_key(changes: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        job_from_dict(plain(**changes))
    for fragment in fragments:
        assert fragment in str(error.value)


def test_num_nodes_above_one_is_fine_with_a_cluster() -> None:
    job = job_from_dict(plain(trainer={"num_nodes": 2}, cluster={"partition": "cpu"}))
    assert job.trainer.num_nodes == 2 and job.cluster is not None


def test_conf_dir_is_the_shipped_tree() -> None:
    assert (conf_dir() / "config.yaml").is_file()
    groups = {path.name for path in Path(conf_dir()).iterdir() if path.is_dir()}
    assert {"trainer", "model", "data", "callbacks", "logger", "cluster", "experiment"} <= groups
