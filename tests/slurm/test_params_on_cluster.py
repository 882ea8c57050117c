"""The Slurm side's Python on the real cluster: preflight with real sinfo/scontrol, mapped submissions."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from slurmtools import SlurmCluster, describe_task, wait_for_final_state
from submitit.slurm.slurm import _make_sbatch_string

from slurm.errors import SlurmPreflightError
from slurm.params import SlurmConfig, executor_parameters, make_executor, sbatch_parameters
from slurm.preflight import preflight

pytestmark = pytest.mark.slurm
HERE = Path(__file__).resolve().parent


@pytest.mark.timeout(60)
def test_preflight_accepts_what_fits_and_names_the_real_partitions(slurm_cluster: SlurmCluster) -> None:
    part = preflight(SlurmConfig(), nodes=slurm_cluster.nodes, tasks_per_node=2, gpus_per_node=0)
    assert part.name == "debug"
    assert len(part.nodes) == slurm_cluster.nodes

    with pytest.raises(SlurmPreflightError, match="use one of: debug, high"):
        preflight(SlurmConfig(partition="gpu"), nodes=1, tasks_per_node=1, gpus_per_node=0)
    with pytest.raises(SlurmPreflightError, match=r"trainer\.num_nodes=9"):
        preflight(SlurmConfig(), nodes=9, tasks_per_node=1, gpus_per_node=0)


@pytest.mark.timeout(60)
def test_auto_executor_writes_the_script_our_translation_predicts(tmp_path: Path) -> None:
    cfg = SlurmConfig(
        partition="high", mem_gb=1.5, setup=["echo set up"], additional_parameters={"comment": "x"}
    )
    params = executor_parameters(cfg, devices=2, num_nodes=2, accelerator="cpu")
    executor = make_executor(tmp_path / "%j", cfg, devices=2, num_nodes=2, accelerator="cpu")

    written = executor._executor._make_submission_file_text("<COMMAND>", "uid")
    predicted = _make_sbatch_string(command="<COMMAND>", folder=tmp_path / "%j", **sbatch_parameters(params))
    assert written == predicted
    assert executor._executor.max_num_timeout == cfg.max_num_timeout


@pytest.mark.timeout(180)
def test_mapped_parameters_start_one_task_per_device_on_every_node(
    tmp_path: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    cfg = SlurmConfig(time_min=5, signal_delay_s=30, cpus_per_task=1)
    nodes, devices = slurm_cluster.nodes, 2
    preflight(cfg, nodes, devices, 0)
    executor = make_executor(tmp_path / "%j", cfg, devices=devices, num_nodes=nodes, accelerator="cpu")

    job = executor.submit(describe_task, "mapped")
    deadline = time.monotonic() + 120
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.5)
    results = job.results()

    assert sorted(int(r["procid"]) for r in results) == list(range(nodes * devices))
    assert {r["ntasks"] for r in results} == {str(nodes * devices)}
    assert len({r["hostname"] for r in results}) == nodes
    assert wait_for_final_state(job.job_id, timeout_s=60) == "COMPLETED"
