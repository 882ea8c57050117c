"""Trainer.fit/validate/test/predict: training works, evaluation modes, optimization settings, manual mode."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import trainer_core as tc
from tests.unit.helpers import Classifier, loader, quiet_trainer, weights


def test_fit_lowers_the_loss_and_counts_steps_and_epochs(tmp_path: Path) -> None:
    model = Classifier()
    trainer = quiet_trainer(tmp_path, max_epochs=5)
    before = trainer.validate(model, loader())[0]["val_loss"]
    trainer.fit(model, loader(shuffle=True), loader())
    assert trainer.global_step == 5 * 8 and trainer.current_epoch == 5
    assert set(trainer.logged_metrics) >= {"train_loss_step", "train_loss_epoch", "val_loss"}
    after = trainer.validate(model, loader())[0]["val_loss"]
    assert after < before * 0.8


def test_evaluation_runs_in_eval_mode_without_grad_and_returns_to_train(tmp_path: Path) -> None:
    seen: list[tuple[bool, bool]] = []

    class Watch(Classifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            seen.append((self.training, torch.is_grad_enabled()))

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            seen.append((self.training, torch.is_grad_enabled()))

        def on_train_start(self) -> None:
            self.net[1].eval()  # a frozen part keeps its own mode through validation

    trainer = quiet_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0, limit_train_batches=2)
    model = Watch()
    trainer.fit(model, loader(), loader(n=32))
    assert (False, False) in seen and (True, True) in seen
    assert model.training and not model.net[1].training


def test_accumulate_grad_batches_equals_one_step_on_the_summed_gradient(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = Classifier(lr=0.5)
    reference = copy.deepcopy(model)
    quiet_trainer(tmp_path, max_steps=1, accumulate_grad_batches=4).fit(model, loader(n=64))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    for x, y in loader(n=64):
        (F.cross_entropy(reference(x), y) / 4).backward()
    optimizer.step()
    for a, b in zip(weights(model).values(), weights(reference).values()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping(tmp_path: Path, algorithm: str) -> None:
    norms: list[float] = []

    class Spy(tc.callbacks.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            pass

    class Big(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return super().training_step(batch, batch_idx) * 1000

        def optimizer_step(
            self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
        ) -> None:
            def closure() -> Any:
                return optimizer_closure()

            grads_before = None

            class Recorder:
                pass

            optimizer.step(closure=closure)
            del grads_before, Recorder

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            pass

        def configure_gradient_clipping(
            self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
        ) -> None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            grads = [p.grad for p in self.parameters()]
            if gradient_clip_algorithm == "value":
                norms.append(max(float(g.abs().max()) for g in grads))
            else:
                norms.append(
                    float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
                )

    quiet_trainer(
        tmp_path, max_steps=3, gradient_clip_val=0.5, gradient_clip_algorithm=algorithm, callbacks=[Spy()]
    ).fit(Big(), loader())
    assert len(norms) == 3 and all(n <= 0.5 + 1e-4 for n in norms)


def test_bf16_mixed_keeps_float32_weights(tmp_path: Path) -> None:
    dtypes: list[torch.dtype] = []

    class Spy(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            dtypes.append(self.net[0](batch[0]).dtype)
            return super().training_step(batch, batch_idx)

    model = Spy()
    quiet_trainer(tmp_path, max_steps=2, precision="bf16-mixed").fit(model, loader())
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())


class Gan(tc.TrainingModule):
    """Manual optimization with two optimizers, as the GAN seed program."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = torch.nn.Linear(4, 8)
        self.discriminator = torch.nn.Linear(8, 1)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real = batch[0]
        fake = self.generator(torch.randn(real.shape[0], 4))
        d_loss = (
            F.softplus(self.discriminator(fake.detach())).mean()
            + F.softplus(-self.discriminator(real)).mean()
        )
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = F.softplus(-self.discriminator(fake)).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.Adam(self.generator.parameters(), 1e-3),
            torch.optim.Adam(self.discriminator.parameters(), 1e-3),
        ]


def test_manual_optimization_with_two_optimizers(tmp_path: Path) -> None:
    model = Gan()
    before = weights(model)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 8)), batch_size=8)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, data)
    after = weights(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert trainer.global_step == 2 * 4  # Lightning counts each optimizer's step
    assert set(trainer.progress_bar_metrics) == {"g_loss", "d_loss"}


def test_several_optimizers_in_automatic_mode_is_an_error(tmp_path: Path) -> None:
    class Auto(Gan):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = True

    with pytest.raises(tc.MisconfigurationError, match="manual optimization"):
        quiet_trainer(tmp_path).fit(Auto(), loader())


def test_training_step_returning_none_skips_the_step_and_warns_once(tmp_path: Path) -> None:
    class Skipper(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx % 2 else loss

    trainer = quiet_trainer(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Skipper(), loader())
    assert trainer.global_step == 4
    assert sum("returned None" in str(w.message) for w in caught) == 1


def test_test_returns_metric_dicts_and_predict_returns_outputs_in_order(tmp_path: Path) -> None:
    class TwoSets(Classifier):
        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            super().test_step(batch, batch_idx)

    model = TwoSets()
    trainer = quiet_trainer(tmp_path)
    results = trainer.test(model, [loader(n=32), loader(n=48, seed=3)])
    assert len(results) == 2
    assert set(results[0]) == {"test_loss/dataloader_idx_0"} and set(results[1]) == {
        "test_loss/dataloader_idx_1"
    }
    predictions = trainer.predict(model, loader(n=40, batch_size=16))
    assert [p.shape[0] for p in predictions] == [16, 16, 8]
    x = torch.cat([batch[0] for batch in loader(n=40, batch_size=16)])
    assert torch.equal(torch.cat(predictions), model(x).argmax(dim=1))


class Data(tc.DataModule):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{stage}")

    def teardown(self, stage: str) -> None:
        self.calls.append(f"teardown:{stage}")

    def train_dataloader(self) -> Any:
        return loader()

    def val_dataloader(self) -> Any:
        return loader(n=32)

    def test_dataloader(self) -> Any:
        return loader(n=32)


def test_datamodule_stages(tmp_path: Path) -> None:
    data, model = Data(), Classifier()
    trainer = quiet_trainer(tmp_path)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data)
    assert data.calls == [
        "prepare_data",
        "setup:fit",
        "teardown:fit",
        "prepare_data",
        "setup:test",
        "teardown:test",
    ]
    assert trainer.datamodule is data


def test_hook_order_of_one_epoch(tmp_path: Path) -> None:
    calls: list[str] = []

    class Recorder(tc.callbacks.Callback):
        def __getattribute__(self, name: str) -> Any:
            return object.__getattribute__(self, name)

    names = [
        "setup", "on_fit_start", "on_sanity_check_start", "on_sanity_check_end", "on_train_start",
        "on_train_epoch_start", "on_train_batch_start", "on_before_backward", "on_after_backward",
        "on_before_optimizer_step", "on_before_zero_grad", "on_train_batch_end", "on_validation_start",
        "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_end", "on_train_epoch_end",
        "on_train_end", "on_fit_end", "teardown",
    ]  # fmt: skip
    for name in names:
        setattr(Recorder, name, lambda self, *a, _n=name: calls.append(_n))
    quiet_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1, callbacks=[Recorder()]).fit(
        Classifier(), loader(), loader()
    )
    assert calls == [
        "setup", "on_fit_start", "on_sanity_check_start", "on_validation_start", "on_validation_epoch_start",
        "on_validation_epoch_end", "on_validation_end", "on_sanity_check_end", "on_train_start",
        "on_train_epoch_start", "on_train_batch_start", "on_before_zero_grad", "on_before_backward",
        "on_after_backward", "on_before_optimizer_step", "on_train_batch_end", "on_validation_start",
        "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_end", "on_train_epoch_end",
        "on_train_end", "on_fit_end", "teardown",
    ]  # fmt: skip


def test_old_style_epoch_end_hooks_receive_the_step_outputs(tmp_path: Path) -> None:
    received: dict[str, Any] = {}

    class OldStyle(Classifier):
        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            return {"n": batch[0].shape[0]}

        def validation_step_end(self, output: Any) -> Any:
            return output["n"]

        def validation_epoch_end(self, outputs: Any) -> None:
            received["val"] = list(outputs)
            self.log("val_count", float(sum(outputs)))

        def training_epoch_end(self, outputs: Any) -> None:
            received["train"] = len(outputs)

    trainer = quiet_trainer(tmp_path, num_sanity_val_steps=0)
    trainer.fit(OldStyle(), loader(n=64), loader(n=40))
    assert received == {"val": [16, 16, 8], "train": 4}
    assert float(trainer.callback_metrics["val_count"]) == 40.0
