"""The ranks' stop votes (read one check late, drained, never skipped), the training epoch's metric sums in a
checkpoint, and an interrupted validation that runs again on resume (one process)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import trainer_core as tc
from tests.unit.helpers import classification_data
from tests.unit.test_preemption import Noisy, SignalAt, _assert_same_weights
from trainer_core.collectives import SingleProcess
from trainer_core.metrics import MetricStore
from trainer_core.preemption import Preemption, PreemptionSignals, StopVotes

EVERY_CHECK = PreemptionSignals(vote_every_s=0)


class LateVote:
    """A started vote: the other rank's flag is the one it had when the vote started; waiting reduces."""

    def __init__(self, peers: TwoRanks, flag: torch.Tensor) -> None:
        # The other rank's vote: its signal flag and its proposed spacing (negated, as StopVotes sends it).
        self.flag, self.other = flag, torch.tensor([peers.other_rank_flag, -peers.other_rank_spacing])
        self.done = False

    def wait(self) -> bool:
        self.flag.copy_(torch.maximum(self.flag, self.other))
        self.done = True
        return True


class TwoRanks(SingleProcess):
    """Collectives of rank 0 of 2, where the other rank's vote is `other_rank_flag`; records every vote."""

    other_rank_flag = 0.0
    other_rank_spacing = 1.0

    def __init__(self) -> None:
        self.votes: list[LateVote] = []

    @property
    def world_size(self) -> int:
        return 2

    def all_reduce_async(self, tensor: torch.Tensor, op: Any = "sum") -> LateVote:
        assert op == "max"
        self.votes.append(LateVote(self, tensor))
        return self.votes[-1]


def test_a_vote_is_read_at_the_next_check_on_every_rank_alike() -> None:
    collectives = TwoRanks()
    votes = StopVotes(Preemption(EVERY_CHECK), collectives)
    assert votes.check() is False  # nothing to read yet
    collectives.other_rank_flag = 1.0  # the other rank got a signal and votes so at this check
    assert votes.check() is False and len(collectives.votes) == 2 and collectives.votes[0].done
    assert not collectives.votes[1].done  # started, read at the next check
    assert votes.check() is True
    assert votes.check() is True and len(collectives.votes) == 3  # agreed: no more votes
    assert votes.drain() is True and all(vote.done for vote in collectives.votes)


def test_drain_and_check_now_leave_no_vote_running() -> None:
    collectives = TwoRanks()
    recorder = Preemption(EVERY_CHECK)
    votes = StopVotes(recorder, collectives)
    votes.check()
    assert votes.drain() is False and all(vote.done for vote in collectives.votes)
    recorder.received = signal.SIGUSR2  # this rank's own signal
    assert votes.check_now() is True  # read at once: a blocking round trip
    assert all(vote.done for vote in collectives.votes) and votes.drain() is True


def test_votes_are_spaced_by_the_smallest_proposal_of_the_ranks() -> None:
    collectives = TwoRanks()
    collectives.other_rank_spacing = 250.0  # the smaller proposal wins
    votes = StopVotes(Preemption(PreemptionSignals(vote_every_s=3600)), collectives)
    votes.check()  # the first check votes; its proposal: as many checks as an hour holds, at most 100
    votes.check()  # reads it: from now on, one vote every 100 checks
    assert len(collectives.votes) == 2
    for _ in range(StopVotes.MAX_CHECKS_PER_VOTE - 1):
        votes.check()
    assert len(collectives.votes) == 2
    votes.check()
    assert len(collectives.votes) == 3


def test_one_process_reads_its_own_vote_at_once() -> None:
    recorder = Preemption()
    votes = StopVotes(recorder, SingleProcess())
    assert votes.check() is False
    recorder.received = signal.SIGTERM
    assert votes.check() is True


def test_metric_sums_round_trip_without_folding() -> None:
    store = MetricStore()
    store.in_train_step = True
    store.set_batch(torch.zeros(3, 2))
    for value in (0.1, 0.2, 0.7):
        store.log("loss", torch.tensor(value), on_epoch=True)
        store.log("top", torch.tensor(value * 3), on_step=False, on_epoch=True, reduce_fx="max")
    saved = store.state_dict("train")
    assert len(saved["loss"]["pending"]) == 3 and saved["loss"]["total"] is None  # stored as logged
    again = MetricStore()
    again.load_state_dict(saved)
    for target in (store, again):
        target.in_train_step = True
        target.set_batch(torch.zeros(3, 2))
        target.log("loss", torch.tensor(0.4), on_epoch=True)
        target.log("top", torch.tensor(0.5), on_step=False, on_epoch=True, reduce_fx="max")
    expected, restored = store.end_epoch("train"), again.end_epoch("train")
    assert expected.keys() == restored.keys() == {"loss_epoch", "top"}
    for name in expected:
        assert torch.equal(expected[name][1], restored[name][1]), name


class EpochLosses(Noisy):
    """Noisy, logging its loss per epoch too and keeping each epoch's value."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_values: dict[int, torch.Tensor] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("epoch_loss", loss, on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.epoch_values[self.current_epoch] = self.trainer.callback_metrics["epoch_loss"].clone()


def _fit(root: Path, callbacks: list[Any], ckpt_path: Any = None) -> tuple[EpochLosses, Any]:
    tc.seed_everything(11)
    model = EpochLosses()
    trainer = tc.Trainer(
        deterministic=True, default_root_dir=root, callbacks=callbacks, logger=False, max_epochs=2,
        enable_progress_bar=False, enable_model_summary=False, val_check_interval=0.5,
    )  # fmt: skip
    train = DataLoader(classification_data(128), batch_size=16, shuffle=True)
    val = DataLoader(classification_data(64, seed=1), batch_size=8)
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.timeout(120)
def test_epoch_metrics_after_a_mid_epoch_resume_equal_the_uninterrupted_run(tmp_path: Path) -> None:
    straight, _ = _fit(tmp_path / "straight", [])
    _, stopped = _fit(tmp_path / "run", [SignalAt("on_train_batch_end", lambda t, *a: t.global_step == 11)])
    assert stopped.state.status == "preempted"
    resumed, _ = _fit(tmp_path / "run", [], ckpt_path="last")
    assert list(resumed.epoch_values) == [1]  # epoch 1 was resumed in its middle
    assert torch.equal(resumed.epoch_values[1], straight.epoch_values[1])


@pytest.mark.timeout(120)
def test_a_signal_inside_validation_stops_between_its_batches_and_resume_runs_it_again(
    tmp_path: Path,
) -> None:
    straight, _ = _fit(tmp_path / "straight", [])
    seen: list[tuple[int, int]] = []

    def record(self: Any, t: Any, m: Any, out: Any, batch: Any, idx: int) -> None:
        if not t.sanity_checking:
            seen.append((t.global_step, idx))

    recorder = type("Seen", (tc.callbacks.Callback,), {"on_validation_batch_end": record})()
    signal_at = SignalAt("on_validation_batch_end", lambda t, *a: t.current_epoch == 1 and a[2] == 2)
    _, stopped = _fit(tmp_path / "run", [signal_at, recorder])
    assert stopped.state.status == "preempted" and seen[-1] == (12, 2)  # stopped after batch 2 of 8
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["loops"]["validation_pending"] and saved["loops"]["epoch_batches"] == 4
    seen.clear()
    resumed, trainer = _fit(tmp_path / "run", [recorder], ckpt_path="last")
    assert seen[:8] == [(12, idx) for idx in range(8)]  # the whole validation again, first
    assert not trainer.progress.validation_pending
    _assert_same_weights(straight, resumed)
    assert torch.equal(resumed.epoch_values[1], straight.epoch_values[1])
