"""The rank environment: detection from torchrun/Slurm variables, node lists, port policy, mismatch errors."""

from __future__ import annotations

import socket

import pytest

from trainer_core.environment import (
    RankEnvironment,
    check_master_port,
    derive_master_port,
    is_port_free,
    parse_nodelist,
    parse_tasks_per_node,
    validate,
)
from trainer_core.errors import DistributedError, MisconfigurationError

TORCHRUN = {
    "RANK": "3",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "head",
    "MASTER_PORT": "29400",
    "TORCHELASTIC_USE_AGENT_STORE": "True",
}
SLURM_ONE_NODE = {
    "SLURM_JOB_ID": "4711",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "2",
    "SLURM_NNODES": "1",
    "SLURM_NODEID": "0",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_TASKS_PER_NODE": "2",
    "SLURM_JOB_NODELIST": "gpu5",
}
SLURM_TWO_NODES = {
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "2",
    "SLURM_LOCALID": "0",
    "SLURM_NTASKS": "3",
    "SLURM_NNODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_TASKS_PER_NODE": "1,2",
    "SLURM_JOB_NODELIST": "node[07-08]",
}


def test_torchrun_variables() -> None:
    env = RankEnvironment.detect(TORCHRUN)
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    assert (env.node_rank, env.num_nodes, env.master_addr, env.master_port) == (1, 2, "head", 29400)
    assert env.source == "torchrun"
    assert env.agent_store is True


def test_torchrun_wins_over_slurm() -> None:
    env = RankEnvironment.detect({**SLURM_TWO_NODES, **TORCHRUN})
    assert env.source == "torchrun"
    assert env.rank == 3


def test_slurm_single_node() -> None:
    env = RankEnvironment.detect(SLURM_ONE_NODE)
    assert env.source == "slurm"
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (1, 1, 2, 2)
    assert (env.node_rank, env.num_nodes, env.job_id) == (0, 1, "4711")
    assert env.master_addr == "gpu5"
    assert env.master_port == 15000 + 4711


def test_slurm_two_nodes_uneven_tasks() -> None:
    env = RankEnvironment.detect(SLURM_TWO_NODES)
    assert (env.rank, env.local_rank, env.world_size) == (2, 0, 3)
    assert (env.node_rank, env.num_nodes, env.local_world_size) == (1, 2, 2)
    assert env.master_addr == "node07"
    assert env.master_port == 15000 + 123456 % 20000


def test_slurm_master_address_and_port_from_the_environment_win() -> None:
    env = RankEnvironment.detect({**SLURM_TWO_NODES, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "40000"})
    assert (env.master_addr, env.master_port) == ("10.0.0.1", 40000)


def test_batch_shell_without_srun_is_one_process() -> None:
    batch = {k: v for k, v in SLURM_ONE_NODE.items() if k not in ("SLURM_STEP_ID", "SLURM_PROCID")}
    env = RankEnvironment.detect(batch)
    assert (env.source, env.world_size, env.rank) == ("single", 1, 0)
    assert env.job_id == "4711"


def test_interactive_allocation_is_one_process() -> None:
    env = RankEnvironment.detect({**SLURM_ONE_NODE, "SLURM_JOB_NAME": "interactive"})
    assert env.source == "single"


def test_no_variables_is_one_process() -> None:
    env = RankEnvironment.detect({})
    assert (env.source, env.rank, env.world_size, env.num_nodes) == ("single", 0, 1, 1)
    assert not env.is_distributed


def test_malformed_variable_names_itself() -> None:
    with pytest.raises(MisconfigurationError, match="SLURM_PROCID='x'"):
        RankEnvironment.detect({**SLURM_ONE_NODE, "SLURM_PROCID": "x"})


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("gpu5", ["gpu5"]),
        ("a,b,c", ["a", "b", "c"]),
        ("node[9-11]", ["node9", "node10", "node11"]),
        ("node[098-101]", ["node098", "node099", "node100", "node101"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("x[1,3],y[5]", ["x1", "x3", "y5"]),
        ("", []),
    ],
)
def test_parse_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert parse_nodelist(nodelist) == hosts


def test_parse_nodelist_rejects_a_bad_range() -> None:
    with pytest.raises(MisconfigurationError, match="node\\[a-b\\]"):
        parse_nodelist("node[a-b]")


@pytest.mark.parametrize(
    ("text", "counts"), [("2(x3)", [2, 2, 2]), ("2(x3),1", [2, 2, 2, 1]), ("4", [4]), ("1,2", [1, 2])]
)
def test_parse_tasks_per_node(text: str, counts: list[int]) -> None:
    assert parse_tasks_per_node(text) == counts


def test_tasks_per_node_in_repeat_form_sets_local_world_size() -> None:
    env = RankEnvironment.detect({**SLURM_TWO_NODES, "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_NTASKS": "4"})
    assert env.local_world_size == 2


def test_derived_port_is_the_same_for_every_rank_and_in_range() -> None:
    ports = {derive_master_port("987654")} | {derive_master_port("987654") for _ in range(3)}
    assert ports == {15000 + 987654 % 20000}
    assert derive_master_port("55_3") == 15000 + 553
    assert 15000 <= derive_master_port("99999999") < 35000


def test_master_port_check_fails_on_rank_zero_when_taken() -> None:
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        assert not is_port_free("", taken)
        env = RankEnvironment.detect({**SLURM_ONE_NODE, "SLURM_PROCID": "0", "MASTER_PORT": str(taken)})
        with pytest.raises(DistributedError, match=f"MASTER_PORT={taken}.*HINT: set MASTER_PORT"):
            check_master_port(env)
        # Other ranks cannot check the master's host, and torchrun's agent holds the port on purpose.
        check_master_port(RankEnvironment.detect({**SLURM_ONE_NODE, "MASTER_PORT": str(taken)}))
        check_master_port(RankEnvironment.detect({**TORCHRUN, "RANK": "0", "MASTER_PORT": str(taken)}))


def test_master_port_check_passes_when_free() -> None:
    with socket.socket() as probe:
        probe.bind(("", 0))
        free = probe.getsockname()[1]
    env = RankEnvironment.detect({**SLURM_ONE_NODE, "SLURM_PROCID": "0", "MASTER_PORT": str(free)})
    check_master_port(env)


def test_devices_above_one_without_a_launcher() -> None:
    env = RankEnvironment.detect({})
    with pytest.raises(
        MisconfigurationError, match=r"devices=2.*`launch trainer.devices=2`.*nproc-per-node=2"
    ):
        validate(env, devices=2, num_nodes=1, accelerator="cpu", visible_gpus=0)
    validate(env, devices=1, num_nodes=1, accelerator="cpu", visible_gpus=0)


def test_devices_differ_from_slurm_tasks_per_node() -> None:
    env = RankEnvironment.detect(SLURM_ONE_NODE)
    with pytest.raises(
        MisconfigurationError, match=r"devices=4, but Slurm says SLURM_NTASKS_PER_NODE=2.*HINT"
    ):
        validate(env, devices=4, num_nodes=1, accelerator="cpu", visible_gpus=0)


def test_num_nodes_differ_from_slurm_nodes() -> None:
    env = RankEnvironment.detect(SLURM_ONE_NODE)
    with pytest.raises(MisconfigurationError, match=r"num_nodes=2, but Slurm says SLURM_NNODES=1.*HINT"):
        validate(env, devices=2, num_nodes=2, accelerator="cpu", visible_gpus=0)


def test_slurm_layout_that_matches_passes() -> None:
    validate(RankEnvironment.detect(SLURM_TWO_NODES), 2, 2, "cpu", 0)


def test_fewer_gpus_than_local_ranks() -> None:
    env = RankEnvironment.detect(SLURM_ONE_NODE)
    with pytest.raises(MisconfigurationError, match=r"accelerator='gpu' with 2 rank.*sees 1 GPU.*HINT"):
        validate(env, devices=2, num_nodes=1, accelerator="gpu", visible_gpus=1)
    validate(env, devices=2, num_nodes=1, accelerator="gpu", visible_gpus=2)
    validate(env, devices=2, num_nodes=1, accelerator="cpu", visible_gpus=0)


def test_torchrun_world_size_differs_from_devices_times_nodes() -> None:
    env = RankEnvironment.detect(TORCHRUN)
    with pytest.raises(
        MisconfigurationError, match="num_nodes=1 \\(2 ranks\\), but torchrun says WORLD_SIZE=4"
    ):
        validate(env, devices=2, num_nodes=1, accelerator="cpu", visible_gpus=0)
    with pytest.raises(MisconfigurationError, match="devices=4, but torchrun says LOCAL_WORLD_SIZE=2"):
        validate(env, devices=4, num_nodes=1, accelerator="cpu", visible_gpus=0)
    validate(env, devices=2, num_nodes=2, accelerator="cpu", visible_gpus=0)
