"""`tc.Trainer` on two real ranks: prepare_data, rank-zero writes, shared decisions, failures, bad launch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.multiproc.ddp_models import Regression, loader, quiet_trainer
from tests.multiproc.test_trainer_ddp import body
from trainer_core.errors import MisconfigurationError

RunRanks = Callable[..., Any]  # the `run_ranks` fixture of conftest.py

pytestmark = pytest.mark.multiproc


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("per_node", "preparers"), [(False, [0]), (True, [0, 1])])
def test_prepare_data_once_per_job_or_node_and_setup_on_every_rank(
    run_ranks: RunRanks, tmp_path: Path, per_node: bool, preparers: list[int]
) -> None:
    record = tmp_path / "calls.jsonl"
    script = body(
        """
import time
class Preparing(Regression):
    prepare_data_per_node = {per_node}
    def prepare_data(self):
        time.sleep(2)  # a slow download: the other rank waits for it
        append_line({record}, f"prepare {rank}")
    def setup(self, stage):
        append_line({record}, f"setup {rank}")
trainer = quiet_trainer(devices=1, num_nodes=2, max_steps=1)
trainer.fit(Preparing(), loader(8, batch_size=4))
save_result(trainer.node_rank)
""",
        per_node=per_node,
        record=str(record),
    )
    job = run_ranks(script, launcher="srun", nodes=2)  # one rank on each of two (simulated) nodes
    job.assert_succeeded()
    assert job.results == [0, 1]
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(c for c in calls if c.startswith("prepare")) == [f"prepare {r}" for r in preparers]
    assert sorted(c for c in calls if c.startswith("setup")) == ["setup 0", "setup 1"]
    # each rank's setup comes after the preparation it depends on (its node's, or the job's): it waited
    for rank in (0, 1):
        preparer = rank if per_node else 0
        assert calls.index(f"setup {rank}") > calls.index(f"prepare {preparer}")


@pytest.mark.timeout(180)
def test_rank_zero_writes_and_every_rank_takes_the_same_stop_and_checkpoint_decisions(
    run_ranks: RunRanks, tmp_path: Path
) -> None:
    script = body(
        """
class Diverging(Regression):
    def validation_step(self, batch, batch_idx):
        # rank 0 improves every epoch, rank 1 gets worse: a rank-local metric that disagrees
        score = float(self.current_epoch) * (1 if self.global_rank == 0 else -1)
        self.log("score", score)
model = Diverging()
model.save_hyperparameters({"width": 4})
checkpoint = tc.callbacks.ModelCheckpoint(dirpath={root} + "/ckpt", monitor="score", mode="max", save_top_k=1)
stopping = tc.callbacks.EarlyStopping(monitor="score", mode="max", patience=0)
trainer = quiet_trainer(
    devices=2, max_epochs=6, default_root_dir={root}, enable_progress_bar=True, enable_checkpointing=True,
    logger=tc.loggers.CSVLogger({root}, name="csv"), callbacks=[checkpoint, stopping],
)
trainer.fit(model, loader(16, batch_size=4), loader(8, batch_size=4))
save_result({"epoch": trainer.current_epoch, "best": checkpoint.best_model_path,
             "stopped": stopping.stopped_epoch, "score": float(trainer.callback_metrics["score"])})
""",
        root=str(tmp_path),
    )
    job = run_ranks(script, launcher="srun")  # separate outputs per process
    job.assert_succeeded()
    zero, one = job.results
    assert (zero["epoch"], zero["best"], zero["stopped"]) == (one["epoch"], one["best"], one["stopped"])
    assert zero["epoch"] < 6  # rank 1's worsening stopped both ranks together
    assert (zero["score"], one["score"]) != (0.0, 0.0)
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")) == [Path(zero["best"]).name]
    [version] = (tmp_path / "csv").iterdir()
    assert (version / "hparams.yaml").is_file()
    rows = (version / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = [row.split(",")[header.index("score")] for row in rows[1:]]
    scores = {float(value) for value in column if value}
    assert scores and all(score >= 0 for score in scores)  # rank zero's values, never rank one's
    outputs = [(tmp_path / "results-srun" / f"process{r}.log").read_text() for r in (0, 1)]
    assert "Epoch" in outputs[0]  # the progress bar, on rank zero only
    assert "Epoch" not in outputs[1]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_one_rank_raising_stops_every_rank_with_its_traceback(run_ranks: RunRanks, launcher: str) -> None:
    script = body(
        """
trainer = quiet_trainer(devices=2, max_epochs=50)
trainer.fit(Regression(fail_at_step=3), loader(64, batch_size=4))
save_result("finished")
"""
    )
    job = run_ranks(script, launcher=launcher, timeout=60)  # the fixture fails the test past 60 s
    assert all(code != 0 for code in job.returncodes), job.output
    assert job.results == [None, None]
    assert "rank 1 fails on purpose at step 3" in job.output
    assert "Traceback" in job.output
    assert "Rank 1 failed" in job.output


@pytest.mark.timeout(180)
def test_a_sync_dist_metric_logged_on_one_rank_only_is_an_error_naming_it(run_ranks: RunRanks) -> None:
    script = body(
        """
class OneRankLogs(Regression):
    def validation_step(self, batch, batch_idx):
        if self.global_rank == 0:
            self.log("only_on_zero", 1.0, sync_dist=True)
trainer = quiet_trainer(devices=2, max_epochs=1)
trainer.fit(OneRankLogs(), loader(8, batch_size=4), loader(8, batch_size=4))
save_result("finished")
"""
    )
    job = run_ranks(script, launcher="srun", timeout=90)
    assert all(code != 0 for code in job.returncodes), job.output
    assert "'only_on_zero' not logged on rank(s) [1]" in job.output


@pytest.mark.timeout(30)
def test_devices_2_in_a_single_process_says_how_to_launch() -> None:
    with pytest.raises(MisconfigurationError, match=r"launch trainer.devices=2.*torchrun --nproc-per-node=2"):
        quiet_trainer(devices=2, max_steps=1).fit(Regression(), loader(8, batch_size=4))
