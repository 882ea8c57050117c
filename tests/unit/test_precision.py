"""Precision settings: parsing, autocast dtypes, float32 weights, and the grad scaler's backward/step/skip."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

import trainer_core as tc
from trainer_core.errors import MisconfigurationError
from trainer_core.precision import Precision
from trainer_core.state import LoopProgress

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("setting", "name"),
    [
        ("32-true", "32-true"),
        (32, "32-true"),
        ("32", "32-true"),
        ("bf16-mixed", "bf16-mixed"),
        ("bf16", "bf16-mixed"),
    ],
)
def test_settings_and_aliases(setting: str | int, name: str) -> None:
    assert Precision.from_setting(setting, CPU).name == name


@pytest.mark.parametrize("bad", ["64", "fp8", 8, True, "16-true"])
def test_unknown_setting_lists_valid_values(bad: object) -> None:
    with pytest.raises(MisconfigurationError, match=r"precision=.*Use one of .*\"bf16-mixed\""):
        Precision.from_setting(bad, CPU)  # type: ignore[arg-type]


@pytest.mark.parametrize("setting", ["16-mixed", 16, "16"])
def test_fp16_on_cpu_points_to_bf16(setting: str | int) -> None:
    with pytest.raises(MisconfigurationError, match=r'needs a CUDA device.*precision="bf16-mixed"'):
        Precision.from_setting(setting, CPU)


def test_full_precision_autocast_is_a_no_op() -> None:
    precision = Precision.from_setting("32-true", CPU)
    layer = torch.nn.Linear(4, 4)
    with precision.autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    assert precision.state_dict() == {}


def test_bf16_autocasts_the_forward_and_keeps_float32_weights() -> None:
    precision = Precision.from_setting("bf16-mixed", CPU)
    layer = torch.nn.Linear(4, 4)
    with precision.autocast():
        output = layer(torch.randn(2, 4))
    assert output.dtype == torch.bfloat16
    precision.backward(output.float().sum())
    assert layer.weight.dtype == torch.float32
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32


def test_plain_step_runs_the_closure_and_reports_a_step() -> None:
    precision = Precision.from_setting("32-true", CPU)
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        optimizer.zero_grad()
        loss = weight.sum()
        precision.backward(loss)
        return loss

    assert precision.step(optimizer, closure) is True
    assert calls == [1]
    assert torch.equal(weight.detach(), torch.zeros(2))


# The grad scaler logic is device independent; torch's GradScaler runs on CPU too, so these tests build the
# fp16 Precision directly (from_setting refuses fp16 on CPU for users, for speed and op coverage).
def _scaled() -> Precision:
    return Precision("16-mixed", CPU)


def test_scaler_scales_the_backward_and_unscales_before_the_step() -> None:
    precision = _scaled()
    assert precision.scaler is not None
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    precision.backward(weight.sum())
    assert weight.grad is not None
    assert torch.equal(weight.grad, torch.full((2,), precision.scaler.get_scale()))
    precision.unscale(optimizer)
    precision.unscale(optimizer)  # a second unscale in one step is harmless
    assert torch.equal(weight.grad, torch.ones(2))
    assert precision.step(optimizer) is True
    precision.update()
    assert torch.equal(weight.detach(), torch.full((2,), 0.5))


def test_scaler_skips_a_step_with_infinite_gradients_and_lowers_the_scale() -> None:
    precision = _scaled()
    assert precision.scaler is not None
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    scale = precision.scaler.get_scale()
    precision.backward((weight * float("inf")).sum())
    assert precision.step(optimizer) is False
    precision.update()
    assert torch.equal(weight.detach(), torch.ones(2))
    assert precision.scaler.get_scale() < scale


def test_scaler_state_round_trips_through_weights_only_load() -> None:
    precision = _scaled()
    assert precision.scaler is not None
    weight = torch.nn.Parameter(torch.ones(2))
    precision.backward((weight * float("inf")).sum())
    precision.step(torch.optim.SGD([weight], lr=0.1))
    precision.update()
    buffer = io.BytesIO()
    torch.save({"precision": precision.state_dict()}, buffer)
    buffer.seek(0)
    restored = _scaled()
    restored.load_state_dict(torch.load(buffer, weights_only=True)["precision"])
    assert restored.scaler is not None
    assert restored.scaler.get_scale() == precision.scaler.get_scale()


def test_scale_multiplies_by_the_scaler_scale_and_is_identity_without_one() -> None:
    loss = torch.tensor(2.0)
    assert Precision("32-true", CPU).scale(loss) is loss
    precision = _scaled()
    assert precision.scaler is not None
    assert float(precision.scale(loss)) == 2.0 * precision.scaler.get_scale()


def test_a_user_backward_receives_the_scaled_loss_and_the_step_sees_true_gradients() -> None:
    from trainer_core.loops.optimization import Optimization

    received: list[float] = []

    class CustomBackward(tc.TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2))

        def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            received.append(float(loss))
            loss.backward()

    module = CustomBackward()
    precision = _scaled()
    assert precision.scaler is not None
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)

    class NoHooks:
        def fire(self, *args: Any) -> None:
            return None

    optimization = Optimization(module, NoHooks(), precision, [optimizer], LoopProgress())  # type: ignore[arg-type]
    optimization.backward(module.weight.sum())
    assert received == [2.0 * precision.scaler.get_scale()]
    precision.unscale(optimizer)
    assert module.weight.grad is not None and torch.equal(module.weight.grad, torch.ones(2))
