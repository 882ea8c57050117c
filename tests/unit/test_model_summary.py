"""ModelSummary: Lightning's table, parameter counts like `50.4 K`, depth, totals and modes."""

from __future__ import annotations

import logging

import pytest
from torch import nn

from trainer_core.callbacks.model_summary import ModelSummary, get_human_readable_count, summarize


class AutoEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 28 * 28))
        self.norm = nn.BatchNorm1d(3)
        self.norm.eval()
        self.decoder[0].weight.requires_grad_(False)


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0  "),
        (195, "195  "),
        (1_000, "1.0 K"),
        (50_435, "50.4 K"),
        (101_523, "101 K"),
        (1_234_567, "1.2 M"),
        (7_000_000_000, "7.0 B"),
    ],
)
def test_human_readable_count(count: int, text: str) -> None:
    assert get_human_readable_count(count) == text


def test_table_matches_lightning_layout() -> None:
    text = summarize(AutoEncoder(), max_depth=1)
    lines = text.splitlines()
    assert lines[0].split("|")[1:] == [" Name    ", " Type        ", " Params ", " Mode "]
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0]) + 6  # Lightning's rule width
    assert lines[2].split("|") == ["0 ", " encoder ", " Sequential  ", " 50.4 K ", " train"]
    assert lines[3].split("|")[1:4] == [" decoder ", " Sequential  ", " 51.2 K "]
    assert lines[4].split("|")[-1] == " eval "
    assert "101 K     Trainable params" in lines
    assert "192       Non-trainable params" in lines
    assert "101 K     Total params" in lines
    assert "0.407     Total estimated model params size (MB)" in lines
    assert "8         Modules in train mode" in lines
    assert "1         Modules in eval mode" in lines


def test_depth_minus_one_lists_every_layer() -> None:
    names = [line.split("|")[1].strip() for line in summarize(AutoEncoder(), -1).splitlines()[2:11]]
    assert names == [
        "encoder",
        "encoder.0",
        "encoder.1",
        "encoder.2",
        "decoder",
        "decoder.0",
        "decoder.1",
        "decoder.2",
        "norm",
    ]


def test_callback_logs_on_rank_zero_only(caplog: pytest.LogCaptureFixture) -> None:
    class Trainer:
        is_global_zero = True

    caplog.set_level(logging.INFO)
    ModelSummary(max_depth=1).on_fit_start(Trainer(), AutoEncoder())  # type: ignore[arg-type]
    assert "Total params" in caplog.text
    caplog.clear()
    Trainer.is_global_zero = False
    ModelSummary(max_depth=1).on_fit_start(Trainer(), AutoEncoder())  # type: ignore[arg-type]
    ModelSummary(max_depth=0).on_fit_start(Trainer(), AutoEncoder())  # type: ignore[arg-type]
    assert caplog.text == ""
