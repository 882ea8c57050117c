"""The save/load and TorchScript seed programs: save_checkpoint, load_from_checkpoint, to_torchscript."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

import trainer_core as tc
from examples.seeds.autoencoder import LitAutoEncoder
from examples.seeds.data import fake_mnist


def main(root: str) -> dict[str, object]:
    model = LitAutoEncoder()
    trainer = tc.Trainer(max_epochs=1, default_root_dir=root, enable_progress_bar=False, logger=False)
    trainer.fit(model, DataLoader(fake_mnist(128), 32))
    ckpt = os.path.join(root, "example.ckpt")
    trainer.save_checkpoint(ckpt)
    new_model = LitAutoEncoder.load_from_checkpoint(checkpoint_path=ckpt)

    script_path = os.path.join(root, "model.pt")
    torch.jit.save(model.to_torchscript(), script_path)
    scripted = torch.jit.load(script_path)
    x = torch.randn(4, 28 * 28)
    with torch.no_grad():
        return {"model": model(x), "reloaded": new_model(x), "scripted": scripted(x)}


if __name__ == "__main__":
    print(main("."))
