"""Two real ranks: collectives, samplers, predictions, DDP gradients, prepare_data, failures.

Gloo on CPU everywhere; the tests parametrised over `backend` also run with NCCL on CUDA where 2 GPUs exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

RunRanks = Callable[..., Any]  # the `run_ranks` fixture of conftest.py

pytestmark = pytest.mark.multiproc

# Every body joins the job the same way; AGREEMENT is the bounded wait for barriers and object exchanges.
JOIN = """
from datetime import timedelta
import torch
from trainer_core import distributed as D
from trainer_core.environment import RankEnvironment
from trainer_core.errors import DistributedError
env = RankEnvironment.detect()
agreement = timedelta(seconds={agreement})
collectives = D.init_process_group(env, "{backend}", timedelta(seconds=60), agreement_timeout=agreement)
device = collectives.device
"""
BACKENDS = [
    "gloo",
    pytest.param(
        "nccl",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs 2 CUDA GPUs"),
        ],
    ),
]


def join(agreement: float = 30, backend: str = "gloo") -> str:
    return JOIN.replace("{agreement}", str(agreement)).replace("{backend}", backend)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_collectives(run_ranks: RunRanks, launcher: str, backend: str) -> None:
    body = (
        join(backend=backend)
        + """
value = float(rank + 1)
sums = collectives.all_reduce(torch.tensor([value, 10 * value], dtype=torch.float64), "sum")
maxima = collectives.all_reduce(torch.tensor([value], device=device), "max")
minima = collectives.all_reduce(torch.tensor([value]), "min")
gathered = collectives.all_gather_object({"rank": rank, "name": f"r{rank}"})
broadcast = collectives.broadcast_object(f"from {rank}", src=1)
collectives.barrier("end")
save_result({"source": env.source, "sum": sums.tolist(), "max": maxima.item(), "min": minima.item(),
             "gathered": gathered, "broadcast": broadcast})
D.destroy_process_group()
"""
    )
    job = run_ranks(body, launcher=launcher)
    job.assert_succeeded()
    for result in job.results:
        assert result["source"] == ("torchrun" if launcher == "torchrun" else "slurm")
        assert result["sum"] == [3.0, 30.0]
        assert (result["max"], result["min"]) == (2.0, 1.0)
        assert result["gathered"] == [{"rank": 0, "name": "r0"}, {"rank": 1, "name": "r1"}]
        assert result["broadcast"] == "from 1"


@pytest.mark.timeout(120)
def test_train_sampler_disjoint_covering_and_reshuffled_per_epoch(run_ranks: RunRanks) -> None:
    body = (
        join()
        + """
from torch.utils.data import DataLoader
from trainer_core.seed import seed_everything
seed_everything(7)
loader = D.train_loader_with_sampler(DataLoader(list(range(40)), batch_size=4, shuffle=True), 2, rank)
epochs = []
for epoch in range(2):
    D.set_epoch(loader, epoch)
    epochs.append([int(i) for batch in loader for i in batch])
save_result(epochs)
D.destroy_process_group()
"""
    )
    job = run_ranks(body)
    job.assert_succeeded()
    for epoch in range(2):
        shards = [result[epoch] for result in job.results]
        assert len(shards[0]) == len(shards[1]) == 20
        assert set(shards[0]).isdisjoint(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(40))
        assert shards[0] != sorted(shards[0])  # shuffled, as the loader was
    assert job.results[0][0] != job.results[0][1]  # set_epoch gave a new permutation


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("size", "expected_shards"), [(101, [51, 50]), (1, [1, 0])])
@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_sampler_sees_every_sample_once_and_predictions_come_back_in_order(
    run_ranks: RunRanks, size: int, expected_shards: list[int], backend: str
) -> None:
    body = (
        join(backend=backend)
        + f"""
from torch.utils.data import DataLoader
dataset = torch.arange({size}, dtype=torch.float32)
loader = D.eval_loader_with_sampler(DataLoader(dataset, batch_size=8), 2, rank)
predictions = [batch.to(device) * 2 for batch in loader]  # on the GPU under NCCL
seen = [int(i) for batch in loader for i in batch]
merged = D.collect_predictions(collectives, predictions, D.batch_indices(loader))
flat = None if merged is None else [float(v) for batch in merged for v in batch]
save_result({{"seen": seen, "merged": flat}})
D.destroy_process_group()
"""
    )
    job = run_ranks(body)
    job.assert_succeeded()
    seen = [result["seen"] for result in job.results]
    assert [len(shard) for shard in seen] == expected_shards
    assert sorted(seen[0] + seen[1]) == list(range(size))
    assert job.results[0]["merged"] == [2.0 * i for i in range(size)]
    assert job.results[1]["merged"] is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_gradients_match_one_process_on_the_combined_batch(run_ranks: RunRanks, backend: str) -> None:
    body = (
        join(backend=backend)
        + """
import copy
from torch import nn
from trainer_core.seed import seed_everything

class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return nn.functional.mse_loss(self.net(inputs), targets)

seed_everything(3)
model = Regressor().to(device)
untrained = copy.deepcopy(model)
reference = copy.deepcopy(model)
inputs, targets = torch.randn(8, 5, device=device), torch.randn(8, 1, device=device)  # same seed, same data
ddp = D.wrap_model(model, collectives.device, D.resolve_strategy("ddp"))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
half = slice(4 * rank, 4 * rank + 4)
for step in range(3):
    optimizer.zero_grad()
    ddp((inputs[half], targets[half]), step).backward()
    optimizer.step()
    reference_optimizer.zero_grad()
    reference.training_step((inputs, targets), step).backward()
    reference_optimizer.step()
gap = max((a - b).abs().max().item() for a, b in zip(model.parameters(), reference.parameters()))
moved = max((a - b).abs().max().item() for a, b in zip(model.parameters(), untrained.parameters()))
save_result({"gap": gap, "moved": moved})
D.destroy_process_group()
"""
    )
    job = run_ranks(body)
    job.assert_succeeded()
    for result in job.results:
        assert result["gap"] < 1e-6
        assert result["moved"] > 1e-3  # the weights did change: the comparison is not vacuous


@pytest.mark.timeout(120)
@pytest.mark.parametrize("per_node", [False, True])
def test_prepare_data_runs_once_and_a_long_preparation_outlasts_the_agreement_timeout(
    run_ranks: RunRanks, per_node: bool, tmp_path: object
) -> None:
    body = (
        join(agreement=1)
        + f"""
import time, pathlib
marker = pathlib.Path(os.environ["RANK_RESULT_DIR"]) / "prepared"
def prepare():
    time.sleep(4)  # longer than the 1 s agreement timeout
    with marker.open("a") as handle:
        handle.write(f"rank {{rank}}\\n")
D.barrier_for_prepare_data(collectives, prepare, per_node={per_node}, poll_interval=0.1)
save_result({{"prepared_seen": marker.read_text()}})
collectives.barrier("after prepare")
D.destroy_process_group()
"""
    )
    job = run_ranks(body)
    job.assert_succeeded()
    for result in job.results:
        assert result["prepared_seen"] == "rank 0\n"  # one node here: once per job and once per node agree


@pytest.mark.timeout(120)
def test_waiters_are_released_soon_after_a_quick_preparation(run_ranks: RunRanks) -> None:
    # `poll_interval` bounds the spacing of the polls; a preparation of 0.5 s must not hold the waiter for a
    # whole interval (60 s here): the early polls are milliseconds apart.
    body = (
        join()
        + """
import time
published = []
waits = []
def prepare():
    time.sleep(0.5)
    published.append(time.time())
D.barrier_for_prepare_data(collectives, prepare, poll_interval=60, on_wait=lambda: waits.append(1))
save_result({"released": time.time(), "published": published, "waits": len(waits)})
D.destroy_process_group()
"""
    )
    job = run_ranks(body)
    job.assert_succeeded()
    preparer, waiter = job.results
    assert waiter["published"] == [] and preparer["waits"] == 0
    assert waiter["waits"] > 1  # it kept checking (and so noticing preemption) while rank 0 prepared
    assert waiter["released"] - preparer["published"][0] < 5, job.output


@pytest.mark.timeout(120)
def test_prepare_data_failure_reaches_the_waiting_ranks(run_ranks: RunRanks) -> None:
    body = (
        join()
        + """
def prepare():
    raise OSError("disk full while downloading")
try:
    D.barrier_for_prepare_data(collectives, prepare, poll_interval=0.1)
except Exception as error:
    save_result({"error": f"{type(error).__name__}: {error}"})
D.destroy_process_group()
"""
    )
    job = run_ranks(body, launcher="srun")
    assert job.results[0] == {"error": "OSError: disk full while downloading"}, job.output
    assert "DistributedError" in job.results[1]["error"], job.output
    assert "rank 0 raised OSError: disk full while downloading" in job.results[1]["error"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("skipped", ["barrier", "all_gather_object"])
def test_a_skipped_agreement_is_an_error_within_the_timeout(run_ranks: RunRanks, skipped: str) -> None:
    call = 'collectives.barrier("after checkpoint")' if skipped == "barrier" else (
        'collectives.all_gather_object(["val_loss"])'
    )  # fmt: skip
    body = (
        join(agreement=3)
        + f"""
import time
if rank == 0:
    try:
        {call}
        save_result({{"error": None}})
    except DistributedError as error:
        save_result({{"error": str(error)}})
else:
    time.sleep(8)  # alive but never arrives: the call was skipped under a rank condition
    save_result({{"error": "skipped on purpose"}})
"""
    )
    job = run_ranks(body, launcher="srun", timeout=60)
    error = job.results[0]["error"]
    assert error is not None, job.output
    assert skipped in error
    assert "(limit 3 s)" in error and "HINT" in error


WAITS = {
    "barrier": 'collectives.barrier("epoch end")',
    "all_reduce": "for _ in range(100000): collectives.all_reduce(torch.ones(3, device=device))",
    "computation": "import time; time.sleep(600)",  # reaches no collective: only the failure watch stops it
}
FAILURES = [
    # (launcher, rank that raises, where the other rank is); `srun` has no agent to end the other rank.
    ("srun", 1, "barrier"),
    ("srun", 1, "all_reduce"),
    ("srun", 1, "computation"),
    ("srun", 0, "all_reduce"),  # rank 0 also hosts the rendezvous store
    ("srun", 0, "computation"),
    ("torchrun", 1, "all_reduce"),
    ("torchrun", 0, "barrier"),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("launcher", "failing", "waiting_in"), FAILURES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rank_that_raises_stops_every_rank_non_zero(
    run_ranks: RunRanks, launcher: str, failing: int, waiting_in: str, backend: str
) -> None:
    # Long timeouts: the other rank must stop because its peer failed, not because a timer ran out.
    body = (
        join(agreement=600, backend=backend).replace("timedelta(seconds=60)", "timedelta(seconds=600)")
        + f"""
import logging
logging.basicConfig(level=logging.INFO, format=f"[rank {{rank}}] %(levelname)s %(message)s")
with D.abort_on_exception(collectives):
    for _ in range(3):
        collectives.all_reduce(torch.ones(3, device=device))
    if rank == {failing}:
        raise ValueError("boom from rank {failing}")
    {WAITS[waiting_in]}
save_result("finished")
"""
    )
    job = run_ranks(body, launcher=launcher, timeout=60)  # the 60 s bound of the contract
    assert all(code != 0 for code in job.returncodes), job.output
    assert job.results == [None, None], job.output
    assert f"ValueError: boom from rank {failing}" in job.output
    assert f"Rank {failing} failed" in job.output
    if launcher == "srun":  # no agent: the other rank said why it stopped
        assert f"because another rank failed first: rank {failing} (" in job.output


@pytest.mark.timeout(120)
def test_manual_backward_inside_the_step_still_syncs_gradients(run_ranks: RunRanks) -> None:
    body = (
        join()
        + """
import copy
from torch import nn
from trainer_core.seed import seed_everything

class Manual(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(5, 1)
        self.automatic_optimization = False
        self.ddp = None
    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = nn.functional.mse_loss(self.net(inputs), targets)
        if self.ddp is not None:  # what the trainer's manual_backward does under DDP
            D.prepare_for_manual_backward(self.ddp, loss)
        loss.backward()
        return None

seed_everything(4)
model = Manual()
reference = copy.deepcopy(model)
inputs, targets = torch.randn(8, 5), torch.randn(8, 1)
model.ddp = D.wrap_model(model, collectives.device, D.resolve_strategy("ddp"))
half = slice(4 * rank, 4 * rank + 4)
gaps = []
for step in range(2):
    model.zero_grad()
    reference.zero_grad()
    model.ddp((inputs[half], targets[half]), step)
    reference.training_step((inputs, targets), step)
    pairs = zip(model.parameters(), reference.parameters())
    gaps.append(max((a.grad - b.grad).abs().max().item() for a, b in pairs))
save_result({"gaps": gaps})
D.destroy_process_group()
"""
    )
    job = run_ranks(body)
    job.assert_succeeded()
    for result in job.results:
        assert max(result["gaps"]) < 1e-6


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_batchnorm_normalises_over_the_combined_batch(run_ranks: RunRanks, backend: str) -> None:
    body = (
        join(backend=backend)
        + """
import copy
from torch import nn
from trainer_core.seed import seed_everything

class Normalised(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return nn.functional.mse_loss(self.net(inputs), targets)

seed_everything(5)
model = Normalised().to(device)
reference = copy.deepcopy(model)
inputs, targets = torch.randn(8, 5, device=device) * 3 + 1, torch.randn(8, 1, device=device)
try:
    ddp = D.wrap_model(model, device, D.resolve_strategy("ddp"), sync_batchnorm=True)
except Exception as error:  # CPU: refused before any work, with the fix
    save_result({"error": f"{type(error).__name__}: {error}"})
    D.destroy_process_group()
    sys.exit(0)
half = slice(4 * rank, 4 * rank + 4)
ddp((inputs[half], targets[half]), 0).backward()
reference.training_step((inputs, targets), 0).backward()
pairs = list(zip(model.parameters(), reference.parameters()))
save_result({
    "synced": type(model.net[1]).__name__,
    "grad_gap": max((a.grad - b.grad).abs().max().item() for a, b in pairs),
    "mean_gap": (model.net[1].running_mean - reference.net[1].running_mean).abs().max().item(),
})
D.destroy_process_group()
"""
    )
    job = run_ranks(body)
    job.assert_succeeded()
    for result in job.results:
        if backend == "gloo":
            assert result["error"].startswith("MisconfigurationError: sync_batchnorm=True on device cpu")
            assert "HINT: set sync_batchnorm=False" in result["error"]
            continue
        assert result["synced"] == "SyncBatchNorm"
        assert result["grad_gap"] < 1e-5
        assert result["mean_gap"] < 1e-6


@pytest.mark.timeout(120)
def test_a_second_stage_joins_the_existing_group(run_ranks: RunRanks) -> None:
    body = (
        join()
        + """
# fit() is done; test() starts in the same process and joins the group that exists
again = D.init_process_group(env, "gloo", timedelta(seconds=60), agreement_timeout=agreement)
total = again.all_reduce(torch.tensor([1.0]), "sum").item()
names = again.all_gather_object(f"r{rank}")
D.destroy_process_group(collectives)
D.destroy_process_group(again)
save_result({"total": total, "names": names})
"""
    )
    job = run_ranks(body, launcher="srun")
    job.assert_succeeded()
    assert job.results == [{"total": 2.0, "names": ["r0", "r1"]}] * 2


@pytest.mark.timeout(120)
def test_leaving_the_group_ends_the_failure_watch_thread(run_ranks: RunRanks) -> None:
    # A daemon thread still inside a store call at interpreter exit aborts the process (torch's C++ code is
    # unwound under it): a finished rank must leave no watch thread running. `stop` alone is what the exit
    # handler calls for a group the user's script created (the script destroys the group itself).
    body = (
        join()
        + """
import threading
def watches():
    return sum(thread.name == "failure-watch" and thread.is_alive() for thread in threading.enumerate())
running = watches()
collectives.failure_watch.stop()
stopped = watches()
D.destroy_process_group(collectives)
save_result({"before": running, "after": stopped})
"""
    )
    job = run_ranks(body, launcher="srun")
    job.assert_succeeded()
    assert job.results == [{"before": 1, "after": 0}] * 2
