"""Mixed precision on CUDA through the real Trainer: 16-mixed with a grad scaler, bf16-mixed with autocast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.helpers import Classifier, loader, quiet_trainer, weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.timeout(300),
]


class DtypeProbe(Classifier):
    """Records the dtype autocast gives the first layer's output inside `training_step`."""

    seen: list[torch.dtype]

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, _ = batch
        self.seen = [*getattr(self, "seen", []), self.net[0](x).dtype]
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("precision", "compute_dtype"), [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)]
)
def test_mixed_precision_trains_on_cuda_with_float32_weights(
    tmp_path: Path, precision: str, compute_dtype: torch.dtype
) -> None:
    model = DtypeProbe(lr=0.5)
    before = weights(model)
    trainer = quiet_trainer(tmp_path, accelerator="gpu", devices=1, precision=precision, max_epochs=3)
    trainer.fit(model, loader(256, shuffle=True))
    assert set(model.seen) == {compute_dtype}
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in model.parameters())
    assert any(not torch.equal(before[k], v.cpu()) for k, v in weights(model).items())
    assert float(trainer.callback_metrics["train_loss_epoch"]) < 0.6


def test_16_mixed_checkpoint_holds_the_scaler_state(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, accelerator="gpu", devices=1, precision="16-mixed", max_epochs=1)
    trainer.fit(Classifier(), loader(64))
    path = tmp_path / "manual.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)
    assert state["precision"], "16-mixed on CUDA must store the grad scaler's state"
    assert "scale" in state["precision"]
