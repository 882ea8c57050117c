"""Checkpoint snapshots of CUDA state: pinned buffers, copies on the training stream, consistent files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import trainer_core as tc
from trainer_core import checkpoint as checkpoint_io
from trainer_core.checkpoint.snapshot import BufferPool

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_a_cuda_snapshot_lands_in_pinned_buffers_and_holds_the_values_of_its_save_point(
    tmp_path: Path,
) -> None:
    weights = torch.randn(64 * 2**20 // 4, device="cuda")  # 64 MiB
    expected = weights.cpu()
    pool = BufferPool()
    snapshot = pool.take({"weights": weights})
    weights.mul_(0.0)  # queued on the same stream, after the copy
    snapshot.ready()
    copied = snapshot.state["weights"]
    assert copied.device.type == "cpu" and copied.is_pinned()
    assert torch.equal(copied, expected)
    path = tmp_path / "last.ckpt"
    checkpoint_io.save_atomic({"weights": weights.add_(1.0)}, path)
    weights.add_(1.0)
    checkpoint_io.wait_for_pending()
    assert torch.equal(checkpoint_io.load(path)["weights"], torch.ones_like(expected))


class _Net(tc.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 4))
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.by_step[self.trainer.global_step] = {k: v.detach().cpu() for k, v in self.state_dict().items()}

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_every_checkpoint_of_a_cuda_fit_holds_the_weights_of_its_step(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 256, generator=generator), torch.randint(0, 4, (512,), generator=generator)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    saves = tc.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=5, save_top_k=-1, save_last=True, filename="{step}"
    )
    trainer = tc.Trainer(
        accelerator="gpu",
        devices=1,
        max_epochs=1,
        callbacks=[saves],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    model = _Net()
    trainer.fit(model, loader)
    files = sorted(tmp_path.glob("step=*.ckpt"))
    assert len(files) == 6
    for path in files:
        state = torch.load(path, weights_only=True)
        expected = model.by_step[state["global_step"]]
        assert all(torch.equal(state["state_dict"][name], value) for name, value in expected.items())
    assert checkpoint_io.check(tmp_path / "last.ckpt") is None
