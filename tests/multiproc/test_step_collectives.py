"""Collectives of training steps on two real ranks: step values are reduced only when a logger reads them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

RunRanks = Callable[..., Any]  # the `run_ranks` fixture of conftest.py

pytestmark = pytest.mark.multiproc

# Counts the reductions of sync_dist step values (each costs every rank a round trip) during a 2-epoch fit
# of 4 steps per rank; LOGGER_ON_RANKS says which ranks get a CSV logger writing every step.
BODY = """
import csv, glob, os
import trainer_core as tc
from trainer_core.loggers import CSVLogger
from trainer_core.metrics import MetricStore
from tests.multiproc.ddp_models import Regression, floats, loader, quiet_trainer

calls = []
reduce_step_values = MetricStore.sync_step_values
def counting(self):
    calls.append(self.stage)
    reduce_step_values(self)
MetricStore.sync_step_values = counting

tc.seed_everything(3)
logs = os.path.join(os.environ["RANK_RESULT_DIR"], f"logs{rank}")
logger = CSVLogger(logs, name="run") if rank in LOGGER_ON_RANKS else False
trainer = quiet_trainer(devices=2, max_epochs=2, logger=logger, log_every_n_steps=1)
trainer.fit(Regression(), loader(16, batch_size=4))
rows = []
for path in glob.glob(os.path.join(logs, "run", "*", "metrics.csv")):
    with open(path) as handle:
        rows += [row for row in csv.DictReader(handle) if row.get("train_loss_step")]
save_result({"calls": len(calls), "steps": trainer.global_step, "rows": rows,
             "epoch_loss": floats(trainer.callback_metrics)["train_loss_epoch"]})
"""


@pytest.mark.timeout(180)
def test_without_a_logger_no_step_runs_a_metric_collective(run_ranks: RunRanks) -> None:
    job = run_ranks(BODY.replace("LOGGER_ON_RANKS", "()"))
    job.assert_succeeded()
    for result in job.results:
        assert result["steps"] == 4
        assert result["calls"] == 0
        assert result["rows"] == []
    # The epoch value is still reduced over both ranks at the epoch end.
    assert job.results[0]["epoch_loss"] == job.results[1]["epoch_loss"]


@pytest.mark.timeout(180)
def test_a_logger_on_rank_zero_only_still_reduces_step_values_on_every_rank(run_ranks: RunRanks) -> None:
    job = run_ranks(BODY.replace("LOGGER_ON_RANKS", "(0,)"))
    job.assert_succeeded()
    for result in job.results:
        assert result["steps"] == 4
        assert result["calls"] == 4  # every rank takes part in every logger write's reduction
    assert len(job.results[0]["rows"]) == 4
    assert job.results[1]["rows"] == []
