"""The real Slurm tier: a session fixture that starts the single-machine cluster when it is not running."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurmtools import SlurmCluster

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPTS = REPO / "slurm" / "cluster"
STATE_DIR = Path(os.environ.get("HPC_SLURM_STATE", "/tmp/hpc-launch-slurm"))
# Two nodes cover every test of the tier (2-node jobs, preemption of a job spanning both nodes).
NODES = int(os.environ.get("HPC_SLURM_NODES", "2"))
SLURM_COMMANDS = ("slurmctld", "slurmd", "sbatch", "sacct", "munged", "slurmdbd", "mariadbd")


def _skip_reason() -> str | None:
    """Why this machine cannot run the cluster, or None when it can."""
    if sys.platform != "linux":
        return f"the single-machine Slurm cluster needs Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "the single-machine Slurm cluster needs root (its daemons run as SlurmUser=root); run as root"
    have_packages = all(
        shutil.which(cmd, path=os.environ.get("PATH", "") + ":/usr/sbin") for cmd in SLURM_COMMANDS
    )
    if not have_packages and shutil.which("apt-get") is None:
        return "Slurm is not installed and there is no apt-get to install it (see slurm/cluster/start.sh)"
    return None


def _is_up() -> bool:
    status = subprocess.run([str(CLUSTER_SCRIPTS / "status.sh"), "--quiet"], check=False, timeout=60)
    return status.returncode == 0


def _run_script(args: list[str], timeout_s: float) -> float:
    """Run a cluster script, fail the session with its output if it fails; return its duration."""
    began = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout_s)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - began


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running cluster: reused when up, else started here (installing Slurm if needed) and stopped after."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    started_here = not _is_up()
    if started_here:
        # Up to 5 minutes: a first start installs the packages (about 10 s on a fast mirror).
        took = _run_script([str(CLUSTER_SCRIPTS / "start.sh"), "--nodes", str(NODES)], timeout_s=300)
        print(f"\nstarted the Slurm cluster in {took:.1f}s", file=sys.stderr)
    nodes = int((STATE_DIR / "nodes").read_text().strip())
    saved_conf = os.environ.get("SLURM_CONF")
    # Slurm commands find the cluster without this when start.sh could link /etc/slurm/slurm.conf.
    os.environ["SLURM_CONF"] = str(STATE_DIR / "etc" / "slurm.conf")
    yield SlurmCluster(STATE_DIR, STATE_DIR / "etc" / "slurm.conf", nodes, started_here)
    if saved_conf is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved_conf
    if started_here:
        took = _run_script([str(CLUSTER_SCRIPTS / "stop.sh")], timeout_s=120)
        print(f"\nstopped the Slurm cluster in {took:.1f}s", file=sys.stderr)


@pytest.fixture(autouse=True)
def _cluster_for_every_slurm_test(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """Every test of this tier needs the cluster, whether or not it names the fixture."""
    return slurm_cluster
