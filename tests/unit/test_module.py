"""TrainingModule: hyperparameters, checkpoint loading, export, freezing, optimizers, properties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import trainer_core as tc
from tests.unit.helpers import Classifier, loader, quiet_trainer


class WithIgnored(tc.TrainingModule):
    def __init__(self, width: int, net: torch.nn.Module, name: str = "x", **extra: Any) -> None:
        super().__init__()
        self.save_hyperparameters(ignore="net")
        self.net = net


def test_save_hyperparameters_collects_init_arguments_with_ignore_and_kwargs() -> None:
    module = WithIgnored(4, torch.nn.Linear(2, 2), depth=3)
    assert dict(module.hparams) == {"width": 4, "name": "x", "depth": 3}
    assert module.hparams.width == 4
    module.hparams.width = 9
    assert module.hparams_initial.width == 4


def test_save_hyperparameters_with_names_only_and_bad_names() -> None:
    class Named(tc.TrainingModule):
        def __init__(self, a: int = 1, b: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters("a")

    assert dict(Named().hparams) == {"a": 1}

    class Wrong(tc.TrainingModule):
        def __init__(self, a: int = 1) -> None:
            super().__init__()
            self.save_hyperparameters("missing")

    with pytest.raises(tc.MisconfigurationError, match="missing"):
        Wrong()


def test_load_from_checkpoint_rebuilds_with_overrides_and_same_weights(tmp_path: Path) -> None:
    model = Classifier(lr=0.05, hidden=12)
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(model, loader())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["hyper_parameters"] == {"lr": 0.05, "hidden": 12}
    restored = Classifier.load_from_checkpoint(path, lr=0.5)
    assert restored.hparams.lr == 0.5 and restored.hparams.hidden == 12
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", ["script", "trace"])
def test_to_torchscript_gives_the_same_outputs(tmp_path: Path, method: str) -> None:
    model = Classifier()
    model.example_input_array = torch.randn(3, 8)
    scripted = model.to_torchscript(tmp_path / "m.pt", method=method)
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), scripted(x))
        assert torch.allclose(model(x), loaded(x))
    assert model.training  # back to its mode


def test_trace_without_inputs_says_how_to_fix() -> None:
    with pytest.raises(tc.MisconfigurationError, match="example_input_array"):
        Classifier().to_torchscript(method="trace")


def test_freeze_and_unfreeze() -> None:
    model = Classifier()
    model.freeze()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.unfreeze()
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_properties_without_a_trainer() -> None:
    model = Classifier()
    assert (model.current_epoch, model.global_step, model.global_rank, model.local_rank) == (0, 0, 0, 0)
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.automatic_optimization
    with pytest.raises(RuntimeError, match="not attached"):
        _ = model.trainer
    with pytest.warns(UserWarning, match="not attached"):
        model.log("x", 1.0)
    assert model.prepare_data_per_node is True


def test_toggle_optimizer_freezes_the_other_optimizers_parameters(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class TwoOpt(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            first, _second = self.optimizers()
            self.toggle_optimizer(first)
            seen["first"] = [p.requires_grad for p in self.net[0].parameters()]
            seen["second"] = [p.requires_grad for p in self.net[2].parameters()]
            self.untoggle_optimizer(first)
            seen["after"] = [p.requires_grad for p in self.net[2].parameters()]

        def configure_optimizers(self) -> Any:
            return [
                torch.optim.SGD(self.net[0].parameters(), lr=0.1),
                torch.optim.SGD(self.net[2].parameters(), lr=0.1),
            ]

    quiet_trainer(tmp_path, max_steps=1).fit(TwoOpt(), loader())
    assert seen == {"first": [True, True], "second": [False, False], "after": [True, True]}
