"""The `cluster.*` mapping to submitit's executor parameters: values, defaults and refusals."""

from __future__ import annotations

import pytest
import submitit

from slurm.errors import SlurmConfigError
from slurm.params import (
    SlurmConfig,
    executor_init_parameters,
    executor_parameters,
    normalize_signal,
    resolve_gpus_per_node,
)


def test_defaults_map_to_one_task_per_device_with_usr2_120s_ahead_and_requeue() -> None:
    params = executor_parameters(SlurmConfig(), devices=2, num_nodes=3, accelerator="cpu")

    assert params["nodes"] == 3
    assert params["tasks_per_node"] == 2
    assert params["timeout_min"] == 60
    assert params["slurm_signal_delay_s"] == 120
    assert params["slurm_additional_parameters"] == {"signal": "USR2@120", "requeue": True}
    assert "gpus_per_node" not in params
    assert "slurm_partition" not in params  # None: the cluster's default partition


def test_every_field_reaches_its_parameter() -> None:
    cfg = SlurmConfig(
        partition="p", account="a", qos="q", time_min=90, cpus_per_task=6, mem_gb=32, constraint="c",
        exclusive=True, job_name="j", setup=["module load x"], additional_parameters={"--mail-type": "END"},
    )  # fmt: skip

    params = executor_parameters(cfg, devices=1, num_nodes=1, accelerator="cpu")

    assert params["slurm_partition"] == "p"
    assert params["slurm_account"] == "a"
    assert params["slurm_qos"] == "q"
    assert params["timeout_min"] == 90
    assert params["cpus_per_task"] == 6
    assert params["mem_gb"] == 32
    assert params["slurm_constraint"] == "c"
    assert params["slurm_exclusive"] is True
    assert params["name"] == "j"
    assert params["slurm_setup"] == ["export SUBMITIT_PREEMPT_SIGNAL=USR2", "module load x"]
    assert params["slurm_additional_parameters"]["mail_type"] == "END"


def test_parameters_are_accepted_by_submitits_auto_executor_checks() -> None:
    # AutoExecutor's own type and name checks run without a cluster on the "debug" executor.
    executor = submitit.AutoExecutor(folder="/tmp/unused-submitit-folder", cluster="debug")
    params = executor_parameters(SlurmConfig(mem_gb=2.5), devices=2, num_nodes=1, accelerator="gpu")
    executor.update_parameters(**params)


def test_no_requeue_is_explicit() -> None:
    params = executor_parameters(SlurmConfig(requeue=False), devices=1, num_nodes=1, accelerator="cpu")
    assert params["slurm_additional_parameters"] == {"signal": "USR2@120", "no_requeue": True}


def test_max_num_timeout_goes_to_the_constructor() -> None:
    assert executor_init_parameters(SlurmConfig(max_num_timeout=5)) == {"slurm_max_num_timeout": 5}


@pytest.mark.parametrize(
    ("given", "expected"), [("USR2", "USR2"), ("SIGUSR2", "USR2"), ("usr1", "USR1"), ("15", "TERM")]
)
def test_signal_names_are_normalized(given: str, expected: str) -> None:
    assert normalize_signal(given) == expected


@pytest.mark.parametrize("bad", ["USR3", "KILL", "", "SIGSTOP"])
def test_bad_signal_is_refused_with_the_key(bad: str) -> None:
    with pytest.raises(SlurmConfigError, match=r"cluster\.signal"):
        normalize_signal(bad)


@pytest.mark.parametrize(
    ("accelerator", "given", "expected"),
    [("gpu", None, 4), ("cuda", None, 4), ("cpu", None, 0), ("auto", None, 0), ("gpu", 8, 8), ("cpu", 2, 2)],
)
def test_gpus_per_node_follow_devices_on_gpu(accelerator: str, given: int | None, expected: int) -> None:
    assert resolve_gpus_per_node(SlurmConfig(gpus_per_node=given), 4, accelerator) == expected


def test_fewer_gpus_than_devices_is_refused() -> None:
    with pytest.raises(SlurmConfigError, match=r"cluster\.gpus_per_node=2 .*trainer\.devices=4"):
        executor_parameters(SlurmConfig(gpus_per_node=2), devices=4, num_nodes=1, accelerator="gpu")


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (SlurmConfig(time_min=0), "cluster.time_min=0"),
        (SlurmConfig(time_min=2, signal_delay_s=120), "cluster.signal_delay_s=120"),
        (SlurmConfig(signal_delay_s=-1), "cluster.signal_delay_s=-1"),
        (SlurmConfig(cpus_per_task=0), "cluster.cpus_per_task=0"),
        (SlurmConfig(mem_gb=0), "cluster.mem_gb=0"),
        (SlurmConfig(max_num_timeout=-1), "cluster.max_num_timeout=-1"),
        (SlurmConfig(additional_parameters={"--time": "10"}), "cluster.additional_parameters.--time"),
        (SlurmConfig(additional_parameters={"requeue": True}), "cluster.additional_parameters.requeue"),
    ],
)
def test_impossible_settings_are_refused_naming_the_key(cfg: SlurmConfig, key: str) -> None:
    with pytest.raises(SlurmConfigError) as raised:
        executor_parameters(cfg, devices=1, num_nodes=1, accelerator="cpu")
    assert key in str(raised.value)


def test_zero_devices_is_refused() -> None:
    with pytest.raises(SlurmConfigError, match=r"trainer\.devices=0"):
        executor_parameters(SlurmConfig(), devices=0, num_nodes=1, accelerator="cpu")
