"""Golden files of the sbatch script that submitit writes for the mapped `cluster.*` parameters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

from slurm.params import AUTO_TO_SLURM_NAMES, SlurmConfig, executor_parameters, sbatch_parameters

GOLDEN = Path(__file__).parent / "golden"
# Regenerate after an intended change with: HPC_UPDATE_GOLDEN=1 pytest tests/unit/test_slurm_sbatch.py
UPDATE = os.environ.get("HPC_UPDATE_GOLDEN") == "1"

CASES: dict[str, tuple[SlurmConfig, int, int, str]] = {
    "slurm_defaults_cpu": (SlurmConfig(), 2, 1, "cpu"),
    "slurm_gpu_two_nodes": (
        SlurmConfig(
            partition="gpu",
            account="proj42",
            qos="normal",
            time_min=240,
            cpus_per_task=10,
            mem_gb=64,
            constraint="a100",
            exclusive=True,
            job_name="wide_classifier",
        ),
        4,
        2,
        "gpu",
    ),
    "slurm_setup_extra_no_requeue": (
        SlurmConfig(
            time_min=30,
            mem_gb=0.5,
            setup=["module load cuda/12.1", "export NCCL_DEBUG=WARN"],
            additional_parameters={"mail-type": "END", "mail_user": "me@example.org", "comment": "a b"},
            signal="SIGTERM",
            signal_delay_s=60,
            requeue=False,
        ),
        1,
        1,
        "auto",
    ),
}


def render(cfg: SlurmConfig, devices: int, num_nodes: int, accelerator: str) -> str:
    params = sbatch_parameters(executor_parameters(cfg, devices, num_nodes, accelerator))
    return _make_sbatch_string(command="<COMMAND>", folder="/RUN_DIR/submitit/%j", **params)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sbatch_script_matches_golden_file(case: str) -> None:
    text = render(*CASES[case])
    golden = GOLDEN / f"{case}.sbatch"
    if UPDATE:
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs; if intended, regenerate (see UPDATE above)"


def test_one_task_per_device_on_every_node_and_gpus_follow_devices() -> None:
    text = render(SlurmConfig(), 4, 2, "gpu")
    assert "#SBATCH --nodes=2" in text
    assert "#SBATCH --ntasks-per-node=4" in text
    assert "#SBATCH --gpus-per-node=4" in text


def test_cpu_job_asks_for_no_gpu() -> None:
    assert "gpus" not in render(SlurmConfig(), 2, 1, "cpu")


def test_signal_and_requeue_are_in_the_script_and_the_job_listens_for_the_same_signal() -> None:
    text = render(SlurmConfig(signal="SIGTERM", signal_delay_s=45), 1, 1, "cpu")
    assert "#SBATCH --signal=TERM@45" in text
    assert "#SBATCH --requeue" in text
    assert "export SUBMITIT_PREEMPT_SIGNAL=TERM" in text
    assert text.count("--signal") == 1


def test_our_name_table_is_submitits() -> None:
    assert SlurmExecutor._equivalence_dict() == AUTO_TO_SLURM_NAMES
