"""Preemption on two real ranks (Gloo, CPU, deterministic): a signal sent to ONE rank stops both at the same
point, `last.ckpt` is written, and the resumed run ends with weights equal bit for bit to the run that never
stopped (and with the same epoch metrics). A mid-epoch checkpoint also carries over between 1 and 2 ranks
when its samples seen split into whole batches, and is refused naming both numbers of ranks when not.
The bodies read their number of ranks from torchrun's WORLD_SIZE; test_world_sizes.py runs them on more.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import trainer_core as tc
from tests.multiproc.ddp_models import Regression, loader, quiet_trainer

RunRanks = Callable[..., Any]  # the `run_ranks` fixture of conftest.py

pytestmark = pytest.mark.multiproc

# Every body starts from this, on as many ranks as torchrun started (WORLD). 32 training samples per rank in
# batches of 4: 8 batches per rank and epoch; 41 validation samples: on 2 ranks, shards of 21 and 20, so rank
# 0 has 6 validation batches and rank 1 has 5. The last rank (rank 1 of 2) is the one that gets the signal.
SETUP = """
import os, signal
import torch
import trainer_core as tc
from tests.multiproc.ddp_models import IndexedPoints, loader, quiet_trainer

WORLD = int(os.environ["WORLD_SIZE"])

class Noisy(tc.TrainingModule):
    '''Dropout, Adam and a per-step scheduler: state an exact resume must restore; records epoch metrics.'''

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)
        )
        self.epoch_losses = {}

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        self.log("local_loss", loss, on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_end(self):
        metrics = self.trainer.callback_metrics
        self.epoch_losses[self.current_epoch] = [
            metrics["train_loss_epoch"].item(), metrics["local_loss"].item()
        ]

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]), sync_dist=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 5, 0.8)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

def signal_at(hook, when):
    '''A callback that sends SIGUSR2 to the last rank only, from `hook`, the first time `when(...)` holds.'''
    sent = []
    def fire(self, trainer, pl_module, *args):
        if trainer.global_rank == WORLD - 1 and not sent and when(trainer, *args):
            sent.append(True)
            os.kill(os.getpid(), signal.SIGUSR2)
    return type("SignalAt", (tc.callbacks.Callback,), {hook: fire})()

def fit(root, callbacks=(), ckpt_path=None, **settings):
    tc.seed_everything(5)
    model = Noisy()
    options = dict(
        devices=WORLD, max_epochs=3, val_check_interval=0.5, deterministic=True, default_root_dir=root,
        callbacks=list(callbacks), plugins=[tc.PreemptionSignals(vote_every_s=0)],  # vote at every check
    )
    trainer = quiet_trainer(**{**options, **settings})
    train, val = loader(32 * WORLD, 4, shuffle=True), loader(41, 4)
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return model, trainer

def last(root):
    torch.distributed.barrier()  # rank 0 writes the file; fit does not wait for it on the other ranks
    return torch.load(os.path.join(root, "checkpoints", "last.ckpt"), weights_only=True)

def params(model):
    return {name: value.detach().clone() for name, value in model.named_parameters()}
"""

# Where the last rank gets its signal: the hook and when (the trainer and the hook's arguments), per point.
POINTS = {
    "mid_epoch": ("on_train_batch_end", "lambda t, *a: t.global_step == 5", {}),
    "inside_validation": (
        "on_validation_batch_end",
        "lambda t, *a: t.current_epoch == 1 and a[2] == 1",
        {},
    ),
    "after_epoch_end": ("on_train_epoch_end", "lambda t, *a: t.current_epoch == 0", {}),
    "accumulation_window": (
        "on_train_batch_end",
        "lambda t, *a: t.current_epoch == 0 and a[2] == 4",
        {"accumulate_grad_batches": 3, "val_check_interval": 1.0},
    ),
}

INTERRUPT_AND_RESUME = """
root = {root}
straight, _ = fit(os.path.join(root, "straight"), **{settings})
run = os.path.join(root, "run")
_, stopped = fit(run, [signal_at({hook}, {when})], **{settings})
saved = last(run)
resumed, trainer = fit(run, ckpt_path="last", **{settings})
pairs = list(zip(params(straight).values(), params(resumed).values()))
same = all(torch.equal(a, b) for a, b in pairs)
save_result({
    "max_difference": max(float((a - b).abs().max()) for a, b in pairs), "device": str(resumed.device),
    "status": stopped.state.status, "received": stopped.received_signal, "step": stopped.global_step,
    "saved_step": saved["global_step"], "loops": saved["loops"], "final_status": trainer.state.status,
    "final_step": trainer.global_step, "straight_step": straight.trainer.global_step, "same_weights": same,
    "straight_losses": straight.epoch_losses, "resumed_losses": resumed.epoch_losses,
})
"""


def body(text: str, **values: Any) -> str:
    """SETUP plus `text` with `{name}` replaced by `values[name]` (braces elsewhere are left alone)."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value if name in ("hook", "when") else repr(value))
    return SETUP + text


def assert_resumed_exactly(results: list[dict[str, Any]], exact: bool = True) -> None:
    """Every rank ends where the uninterrupted run ended, with its weights and its epoch metrics.

    `exact`: bit for bit (CPU, deterministic). Otherwise (CUDA, whose kernels need not be bit-reproducible)
    the weights agree to within 1e-5 and the epoch losses to a relative 1e-5.
    """
    for rank, result in enumerate(results):
        if exact:
            difference = result.get("max_difference")
            assert result["same_weights"], f"rank {rank}: resumed weights differ by up to {difference}"
        else:
            assert result["max_difference"] <= 1e-5, (rank, result["max_difference"])
        assert result["final_status"] == "finished"
        assert result["final_step"] == result["straight_step"]
        # The epochs the resumed run ended have the uninterrupted run's epoch metrics.
        assert result["resumed_losses"], rank
        for epoch, values in result["resumed_losses"].items():
            expected = result["straight_losses"][epoch]
            assert values == (expected if exact else pytest.approx(expected, rel=1e-5)), (rank, epoch)
    # The sync_dist epoch loss is the same on every rank; the rank-local one differs from rank zero's.
    by_rank = [result["straight_losses"] for result in results]
    for other in by_rank[1:]:
        assert all(by_rank[0][e][0] == other[e][0] and by_rank[0][e][1] != other[e][1] for e in by_rank[0])


def assert_stopped_together(results: list[dict[str, Any]]) -> None:
    """Every rank stopped preempted at one step inside the run, the step that `last.ckpt` holds, although
    only the last rank received the signal (the others stopped because the ranks agreed)."""
    for result in results:
        assert result["status"] == "preempted"
        assert result["saved_step"] == result["step"] == results[0]["step"]
        assert 0 < result["step"] < result["straight_step"]
    assert [r["received"] for r in results] == [None] * (len(results) - 1) + [signal.SIGUSR2]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("point", sorted(POINTS))
def test_signal_on_one_rank_stops_both_and_resume_is_exact(
    run_ranks: RunRanks, tmp_path: Path, point: str
) -> None:
    hook, when, settings = POINTS[point]
    script = body(INTERRUPT_AND_RESUME, root=str(tmp_path), settings=settings, hook=repr(hook), when=when)
    job = run_ranks(script, nprocs=2, timeout=200)
    job.assert_succeeded()
    assert_stopped_together(job.results)
    loops = job.results[0]["loops"]
    if point == "inside_validation":
        assert loops["validation_pending"] and loops["epoch"] == 1
    if point == "after_epoch_end":
        assert loops["epoch"] == 1 and loops["epoch_batches"] == 0
    if point == "accumulation_window":
        assert loops["accumulated_batches"] == 0 and loops["epoch_batches"] == 6
    assert_resumed_exactly(job.results)


TWICE = """
root = {root}
straight, _ = fit(os.path.join(root, "straight"))
run = os.path.join(root, "run")
_, first = fit(run, [signal_at("on_train_batch_end", lambda t, *a: t.global_step == 1)])
_, second = fit(run, [signal_at("on_train_batch_end", lambda t, *a: t.global_step == 5)], ckpt_path="last")
names = sorted(os.listdir(os.path.join(run, "checkpoints")))
resumed, trainer = fit(run, ckpt_path="last")
same = all(torch.equal(a, b) for a, b in zip(params(straight).values(), params(resumed).values()))
save_result({
    "steps": [first.global_step, second.global_step], "statuses": [first.state.status, second.state.status],
    "names": names, "final_status": trainer.state.status, "final_step": trainer.global_step,
    "straight_step": straight.trainer.global_step, "same_weights": same,
    "straight_losses": straight.epoch_losses, "resumed_losses": resumed.epoch_losses,
})
"""


@pytest.mark.timeout(240)
def test_twice_in_one_epoch(run_ranks: RunRanks, tmp_path: Path) -> None:
    job = run_ranks(body(TWICE, root=str(tmp_path)), nprocs=2, timeout=200)
    job.assert_succeeded()
    for result in job.results:
        assert result["statuses"] == ["preempted", "preempted"]
        first, second = result["steps"]
        assert 0 < first < second < 8  # both inside epoch 0
        assert [n for n in result["names"] if n.endswith(".ckpt")] == ["last.ckpt"]
    assert_resumed_exactly(job.results)


# -- another number of ranks ----------------------------------------------------------------------------


class StopAt(tc.callbacks.Callback):
    """Sends SIGUSR2 to this process after training batch `batch_idx` of epoch 0 (one process)."""

    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if trainer.current_epoch == 0 and idx == self.batch_idx:
            os.kill(os.getpid(), signal.SIGUSR2)


def _one_rank_fit(root: Path, callbacks: list[Any], ckpt_path: Any = None) -> tuple[Regression, Any]:
    tc.seed_everything(3)
    model = Regression()
    trainer = quiet_trainer(max_epochs=2, deterministic=True, default_root_dir=root, callbacks=callbacks)
    trainer.fit(model, loader(64, 4, shuffle=True), ckpt_path=ckpt_path)
    return model, trainer


TWO_RANKS = """
import os, signal
import torch
import trainer_core as tc
from tests.multiproc.ddp_models import Regression, loader, quiet_trainer

class StopAt(tc.callbacks.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, idx):
        if {stop_at} is not None and trainer.current_epoch == 0 and idx == {stop_at} and rank == 1:
            os.kill(os.getpid(), signal.SIGUSR2)

tc.seed_everything(3)
model = Regression()
trainer = quiet_trainer(
    devices=2, max_epochs=2, deterministic=True, default_root_dir={root}, callbacks=[StopAt()],
    plugins=[tc.PreemptionSignals(vote_every_s=0)],
)
trainer.fit(model, loader(64, 4, shuffle=True), ckpt_path={ckpt_path})
save_result({"seen": model.seen["train"], "status": trainer.state.status, "step": trainer.global_step})
"""


def _two_ranks(root: Path, stop_at: int | None, ckpt_path: str | None) -> str:
    text = TWO_RANKS
    for name, value in {"root": str(root), "stop_at": stop_at, "ckpt_path": ckpt_path}.items():
        text = text.replace("{" + name + "}", repr(value))
    return text


@pytest.mark.timeout(240)
def test_a_mid_epoch_checkpoint_of_one_rank_continues_on_two(run_ranks: RunRanks, tmp_path: Path) -> None:
    # 6 batches of 4 on one rank: 24 samples, 3 batches on each of 2 ranks.
    one, trainer = _one_rank_fit(tmp_path, [StopAt(5)])
    assert trainer.state.status == "preempted" and trainer.global_step == 6
    job = run_ranks(_two_ranks(tmp_path, None, "last"), nprocs=2, timeout=200)
    job.assert_succeeded()
    # Epoch 0 over both runs: every sample exactly once, in the one seeded order.
    epoch0 = one.seen["train"][0] + [i for result in job.results for i in result["seen"][0]]
    assert sorted(epoch0) == list(range(64))
    assert all(len(result["seen"][0]) == 5 * 4 for result in job.results)  # batches 3..7 of each rank
    assert all(result["status"] == "finished" for result in job.results)


@pytest.mark.timeout(240)
def test_a_mid_epoch_checkpoint_of_two_ranks_continues_on_one(run_ranks: RunRanks, tmp_path: Path) -> None:
    job = run_ranks(_two_ranks(tmp_path, 1, None), nprocs=2, timeout=200)
    job.assert_succeeded()
    stopped = job.results[0]["step"]  # rank 1's signal at batch 1 is agreed one check later
    assert all(r["status"] == "preempted" and r["step"] == stopped for r in job.results)
    one, trainer = _one_rank_fit(tmp_path, [], ckpt_path="last")
    assert trainer.state.status == "finished"
    epoch0 = [i for result in job.results for i in result["seen"][0]] + one.seen["train"][0]
    assert sorted(epoch0) == list(range(64))
    assert len(one.seen["train"][0]) == 64 - 2 * 4 * stopped


@pytest.mark.timeout(240)
def test_a_position_that_does_not_split_into_batches_is_refused_naming_both_sizes(
    run_ranks: RunRanks, tmp_path: Path
) -> None:
    # 5 batches of 4 on one rank: 20 samples, not whole batches of 4 on each of 2 ranks.
    _, trainer = _one_rank_fit(tmp_path, [StopAt(4)])
    assert trainer.global_step == 5
    job = run_ranks(_two_ranks(tmp_path, None, "last"), nprocs=2, timeout=200)
    assert job.returncodes != [0, 0]
    assert "written by 1 rank(s) in the middle of epoch 0" in job.output, job.output
    assert "this run has 2 rank(s)" in job.output and "Resume with 1 rank(s)" in job.output
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["sampler"]["world_size"] == 1 and saved["sampler"]["samples_seen"] == 20
