"""The seed programs, ported with only the import and base-class names changed, train and export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from examples.seeds import autoencoder, classifier, datamodule, export, gan


@pytest.mark.timeout(120)
def test_autoencoder_learns(tmp_path: Path) -> None:
    _model, trainer = autoencoder.main(str(tmp_path), max_epochs=4)
    assert trainer.current_epoch == 4
    assert list((tmp_path / "lightning_logs").glob("version_0/events.*"))
    losses = float(trainer.callback_metrics["train_loss"])
    assert losses < 0.08  # the pixels' variance is about 0.1: the reconstruction beats the mean image


@pytest.mark.timeout(120)
def test_classifier_with_warmup_cosine_and_callbacks(tmp_path: Path) -> None:
    model, trainer = classifier.main(str(tmp_path), epochs=4)
    assert float(trainer.callback_metrics["val_acc"]) > 0.9
    best = trainer.checkpoint_callback.best_model_path
    assert best and Path(best).is_file()
    assert float(trainer.callback_metrics["val_acc_epoch"]) > 0.9  # from the old-style validation_epoch_end
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.timeout(120)
def test_datamodule_fit_then_test_from_best_checkpoint(tmp_path: Path) -> None:
    results = datamodule.main(str(tmp_path))
    assert len(results) == 1 and results[0]["test_acc"] > 0.8
    assert list((tmp_path / "test_PL").glob("version_0/hparams.yaml"))


def test_checkpoint_reload_and_torchscript_give_equal_outputs(tmp_path: Path) -> None:
    out = export.main(str(tmp_path))
    assert torch.equal(out["model"], out["reloaded"])
    assert torch.allclose(out["model"], out["scripted"])


@pytest.mark.timeout(120)
def test_gan_generator_moves_towards_the_data(tmp_path: Path) -> None:
    model, real, start = gan.main(str(tmp_path))
    with torch.no_grad():
        fake = model.generator(torch.randn(512, model.latent))
    before = torch.linalg.vector_norm(start - real.mean(0))
    after = torch.linalg.vector_norm(fake.mean(0) - real.mean(0))
    assert after < 0.6 * before
