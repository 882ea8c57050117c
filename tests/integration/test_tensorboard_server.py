"""The real `tensorboard` server reads what a fit wrote: scalars, hparams, device stats and throughput,
and a run interrupted and resumed from `last.ckpt` as one series without duplicated steps."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainer_core as tc

RUN = "run"  # the TensorBoardLogger version folder, so both fits write one event directory


class Classifier(tc.TrainingModule):
    def __init__(self, lr: float = 0.1, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Preempted(Exception):
    """Stands for the job being killed."""


class PreemptAt(tc.callbacks.Callback):
    """Stop the fit abruptly before the batch after optimizer step `step`, as a killed job stops."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise Preempted(f"preempted after step {self.step}")


def fit(
    root: Path, max_steps: int, ckpt_path: str | None = None, preempt_at: int | None = None
) -> tc.Trainer:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(320, 8), torch.randint(0, 2, (320,)))
    trainer = tc.Trainer(
        max_steps=max_steps,
        log_every_n_steps=2,
        logger=tc.loggers.TensorBoardLogger(save_dir=str(root), name="tb", version=RUN),
        callbacks=[
            tc.callbacks.DeviceStatsMonitor(interval_s=0.05),
            tc.callbacks.ThroughputMonitor(),
            tc.callbacks.ModelCheckpoint(
                dirpath=str(root / "checkpoints"), every_n_train_steps=4, save_last=True
            ),
            *([PreemptAt(preempt_at)] if preempt_at is not None else []),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
    trainer.fit(Classifier(), DataLoader(data, batch_size=16), ckpt_path=ckpt_path)
    return trainer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Board:
    """A running `tensorboard` server on loopback and its HTTP data API."""

    def __init__(self, logdir: Path, log_file: Path) -> None:
        self.port = free_port()
        self.log = log_file.open("w")
        command = [_tensorboard(), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--load_fast=false", "--reload_interval=1"]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def wait_for_tag(self, tag: str, deadline_s: float = 90) -> dict[str, Any]:
        """The scalar tags once the server has loaded `tag` (it starts and reads the files asynchronously)."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            assert self.process.poll() is None, "tensorboard exited"
            try:
                tags: dict[str, Any] = self.get("/data/plugin/scalars/tags")
                if tag in tags.get(RUN, {}):
                    return tags
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        pytest.fail(f"tensorboard did not serve {tag!r} within {deadline_s} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, 9)
            self.process.wait()
        self.log.close()


def _tensorboard() -> str:
    beside = Path(sys.executable).with_name("tensorboard")
    found = str(beside) if beside.exists() else shutil.which("tensorboard")
    if found is None:
        pytest.skip("the tensorboard command is not installed")
    return found


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Board, list[tc.Trainer]]]:
    root = tmp_path_factory.mktemp("tb_run")
    with pytest.raises(Preempted):
        fit(root, max_steps=16, preempt_at=10)  # checkpoints at steps 4 and 8; logged up to step 10
    last = root / "checkpoints" / "last.ckpt"
    # The resume point is behind what was logged, so the resumed fit logs steps that already have points.
    assert torch.load(last, weights_only=True)["global_step"] == 8
    resumed = fit(root, max_steps=16, ckpt_path=str(last))
    board = Board(root / "tb", root / "tensorboard.log")
    try:
        yield root, board, [resumed]
    finally:
        board.stop()


@pytest.mark.timeout(240)
def test_scalars_device_stats_and_throughput_are_served(finished_run: tuple[Path, Board, list[Any]]) -> None:
    _, board, _ = finished_run
    tags = board.wait_for_tag("train_loss")[RUN]
    for tag in (
        "train_loss",
        "epoch",
        "device_stats/cpu_process_rss_mb",
        "device_stats/ram_system_used_percent",
        "throughput/samples_per_s",
        "throughput/step_time_s",
        "throughput/data_wait_s",
    ):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    rss = board.get("/data/plugin/scalars/scalars", run=RUN, tag="device_stats/cpu_process_rss_mb")
    assert rss and all(value > 0 for _, _, value in rss)
    rate = board.get("/data/plugin/scalars/scalars", run=RUN, tag="throughput/samples_per_s")
    assert rate and all(value > 0 for _, _, value in rate)


@pytest.mark.timeout(240)
def test_an_interrupted_and_resumed_run_is_one_series_without_duplicated_steps(
    finished_run: tuple[Path, Board, list[Any]],
) -> None:
    _, board, (resumed,) = finished_run
    assert resumed.global_step == 16
    board.wait_for_tag("train_loss")
    for tag in ("train_loss", "device_stats/cpu_process_rss_mb", "throughput/step_time_s"):
        steps = [step for _, step, _ in board.get("/data/plugin/scalars/scalars", run=RUN, tag=tag)]
        # Logged after every second optimizer step (logger step = stepped batches - 1): 1, 3, ..., 15. The
        # preempted fit also logged step 9, after the checkpoint it was resumed from (step 8): that point is
        # replaced by the resumed fit's, not doubled.
        assert steps == [1, 3, 5, 7, 9, 11, 13, 15], f"{tag}: {steps}"


@pytest.mark.timeout(240)
def test_hyperparameters_are_served_by_the_hparams_plugin(
    finished_run: tuple[Path, Board, list[Any]],
) -> None:
    root, board, _ = finished_run
    board.wait_for_tag("train_loss")
    experiment = board.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {info["name"] for info in experiment.get("hparamInfos", [])}
    assert {"lr", "hidden"} <= names, experiment
    assert "hp_metric" in board.get("/data/plugin/scalars/tags")[RUN]
    assert (root / "tb" / RUN / "hparams.yaml").is_file()
