"""configure_optimizers return forms, scheduler configs, stepping rules and scheduler state."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR

from trainer_core.errors import MisconfigurationError
from trainer_core.optim import (
    SchedulerConfig,
    configure,
    load_scheduler_states,
    scheduler_states,
    step_schedulers,
)

# These tests step schedulers without training steps in between, which torch warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")

AUTOMATIC = SimpleNamespace(automatic_optimization=True)
MANUAL = SimpleNamespace(automatic_optimization=False)


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def test_single_optimizer() -> None:
    opt = _optimizer()
    assert configure(opt, AUTOMATIC) == ([opt], [])


@pytest.mark.parametrize("container", [list, tuple])
def test_list_of_optimizers(container: Any) -> None:
    a, b = _optimizer(), _optimizer()
    assert configure(container([a, b]), AUTOMATIC) == ([a, b], [])


def test_two_lists_with_a_scheduler_and_a_scheduler_dict() -> None:
    a, b = _optimizer(), _optimizer()
    sched_a, sched_b = StepLR(a, 1), StepLR(b, 1)
    optimizers, configs = configure(
        ([a, b], [sched_a, {"scheduler": sched_b, "interval": "step"}]), AUTOMATIC
    )
    assert optimizers == [a, b]
    assert [(c.scheduler, c.interval, c.frequency) for c in configs] == [
        (sched_a, "epoch", 1),
        (sched_b, "step", 1),
    ]


def test_dict_with_scheduler_dict() -> None:
    opt = _optimizer()
    sched = StepLR(opt, 1)
    result = {
        "optimizer": opt,
        "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 3, "name": "warmup"},
    }
    optimizers, [config] = configure(result, AUTOMATIC)
    assert optimizers == [opt]
    assert (config.interval, config.frequency, config.name, config.reduce_on_plateau) == (
        "step",
        3,
        "warmup",
        False,
    )


def test_dict_monitor_applies_to_a_bare_plateau_scheduler() -> None:
    opt = _optimizer()
    result = {"optimizer": opt, "lr_scheduler": ReduceLROnPlateau(opt), "monitor": "val_loss"}
    _, [config] = configure(result, AUTOMATIC)
    assert config.reduce_on_plateau and config.monitor == "val_loss"


def test_list_of_dicts() -> None:
    a, b = _optimizer(), _optimizer()
    sched = StepLR(a, 1)
    optimizers, configs = configure([{"optimizer": a, "lr_scheduler": sched}, {"optimizer": b}], AUTOMATIC)
    assert optimizers == [a, b]
    assert [c.scheduler for c in configs] == [sched]


def test_none_warns_and_gives_no_optimizer() -> None:
    with pytest.warns(UserWarning, match="no optimizer"):
        assert configure(None, MANUAL) == ([], [])


@pytest.mark.parametrize("bad", ["adam", 3, [], [torch.zeros(1)], {"lr_scheduler": None}])
def test_unknown_forms_list_the_accepted_ones(bad: Any) -> None:
    with pytest.raises(
        MisconfigurationError, match=r"(?s)returned .*two lists.*a list or tuple of such dicts"
    ):
        configure(bad, AUTOMATIC)


def test_plateau_without_monitor_names_the_fix() -> None:
    opt = _optimizer()
    with pytest.raises(MisconfigurationError, match=r'ReduceLROnPlateau needs a monitored metric.*"monitor"'):
        configure(([opt], [ReduceLROnPlateau(opt)]), AUTOMATIC)


def test_plateau_without_monitor_is_fine_in_manual_optimization() -> None:
    opt = _optimizer()
    _, [config] = configure({"optimizer": opt, "lr_scheduler": ReduceLROnPlateau(opt)}, MANUAL)
    assert config.monitor is None


def test_manual_optimization_ignores_stepping_keys_with_a_warning() -> None:
    opt = _optimizer()
    sched = {"scheduler": StepLR(opt, 1), "monitor": "x", "strict": False, "interval": "step"}
    with pytest.warns(UserWarning, match=r"\['monitor', 'strict'\].*manual optimization"):
        _, [config] = configure({"optimizer": opt, "lr_scheduler": sched}, MANUAL)
    assert (config.monitor, config.strict, config.interval) == (None, True, "step")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"interval": "batch"}, r'"interval": \'batch\'; use "step" or "epoch"'),
        ({"frequency": 0}, r'"frequency": 0; use a positive integer'),
    ],
)
def test_bad_scheduler_dict_values(entry: dict[str, Any], message: str) -> None:
    opt = _optimizer()
    with pytest.raises(MisconfigurationError, match=message):
        configure({"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1), **entry}}, AUTOMATIC)


def test_scheduler_dict_without_scheduler_key() -> None:
    opt = _optimizer()
    with pytest.raises(MisconfigurationError, match='has no "scheduler" key'):
        configure({"optimizer": opt, "lr_scheduler": {"interval": "step"}}, AUTOMATIC)


def test_scheduler_on_an_optimizer_that_was_not_returned() -> None:
    returned, other = _optimizer(), _optimizer()
    with pytest.raises(MisconfigurationError, match="did not return"):
        configure(([returned], [StepLR(other, 1)]), AUTOMATIC)


def test_unknown_scheduler_dict_key_warns() -> None:
    opt = _optimizer()
    with pytest.warns(UserWarning, match="unknown keys"):
        configure(
            {"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1), "intervall": "x"}}, AUTOMATIC
        )


def test_step_interval_and_frequency() -> None:
    opt = _optimizer(lr=1.0)
    config = SchedulerConfig(StepLR(opt, step_size=1, gamma=0.5), interval="step", frequency=2)
    for counter in range(1, 5):
        step_schedulers([config], "epoch", counter, {})  # other interval: never
        step_schedulers([config], "step", counter, {})
    assert _lr(opt) == 0.25  # stepped at counters 2 and 4


def test_plateau_is_stepped_with_the_monitored_metric() -> None:
    opt = _optimizer(lr=1.0)
    config = SchedulerConfig(
        ReduceLROnPlateau(opt, patience=0, factor=0.5), reduce_on_plateau=True, monitor="v"
    )
    step_schedulers([config], "epoch", 1, {"v": torch.tensor(1.0)})
    step_schedulers([config], "epoch", 2, {"v": 2.0})  # worse: reduce
    assert _lr(opt) == 0.5


def test_missing_monitored_metric_with_strict_names_it_and_the_logged_ones() -> None:
    opt = _optimizer()
    config = SchedulerConfig(ReduceLROnPlateau(opt), reduce_on_plateau=True, monitor="val_loss")
    with pytest.raises(MisconfigurationError, match=r"'val_loss'.*\['train_loss', 'val_acc'\]"):
        step_schedulers([config], "epoch", 1, {"val_acc": 0.5, "train_loss": 1.0})


def test_missing_monitored_metric_without_strict_warns_once_and_skips() -> None:
    opt = _optimizer(lr=1.0)
    plateau = ReduceLROnPlateau(opt, patience=0)
    config = SchedulerConfig(plateau, reduce_on_plateau=True, monitor="val_loss", strict=False)
    with pytest.warns(UserWarning, match="val_loss") as warned:
        step_schedulers([config], "epoch", 1, {})
        step_schedulers([config], "epoch", 2, {})
    assert len(warned) == 1
    assert plateau.last_epoch == 0


def test_step_fn_replaces_the_plain_step() -> None:
    opt = _optimizer()
    config = SchedulerConfig(ReduceLROnPlateau(opt), reduce_on_plateau=True, monitor="v")
    calls: list[tuple[Any, Any]] = []
    step_schedulers([config], "epoch", 1, {"v": 3.0}, step_fn=lambda s, m: calls.append((s, m)))
    assert calls == [(config.scheduler, 3.0)]


def test_scheduler_state_round_trip() -> None:
    opt = _optimizer(lr=1.0)
    config = SchedulerConfig(StepLR(opt, step_size=1, gamma=0.5))
    step_schedulers([config], "epoch", 1, {})
    states = scheduler_states([config])
    fresh_opt = _optimizer(lr=1.0)
    fresh = SchedulerConfig(StepLR(fresh_opt, step_size=1, gamma=0.5))
    load_scheduler_states([fresh], states)
    assert fresh.scheduler.last_epoch == 1
    with pytest.raises(MisconfigurationError, match=r"holds 1 lr scheduler states but .* returned 0"):
        load_scheduler_states([], states)
