"""The built-in example's training as a hand-written script: `python hand.py` or `torchrun ... hand.py`.

What people write without a framework: seed, generate the dataset once (as the example's data module does)
and load it, an MLP with AdamW, one epoch with TensorBoard scalars every 50 steps, a validation pass, and a
checkpoint of model and optimizer. Under torchrun (RANK set) it runs DDP on Gloo with a
`DistributedSampler`, validation sums all-reduced, and rank zero writing TensorBoard and the checkpoint.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter

from bench.startup.stamp import first_step

SAMPLES, FEATURES, CLASSES, VAL_FRACTION, BATCH = 4000, 32, 10, 0.2, 64


def load_data(data_dir: Path) -> tuple[TensorDataset, TensorDataset]:
    """The example's Gaussian blobs: generated into data_dir once (atomically), then read."""
    path = data_dir / f"blobs_n{SAMPLES}_f{FEATURES}_c{CLASSES}_s0.pt"
    if not path.is_file():
        generator = torch.Generator().manual_seed(0)
        centers = torch.randn(CLASSES, FEATURES, generator=generator)
        labels = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
        features = centers[labels] + torch.randn(SAMPLES, FEATURES, generator=generator)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"features": features, "labels": labels}, tmp)
        os.replace(tmp, path)
    data = torch.load(path, weights_only=True)
    cut = int(SAMPLES * VAL_FRACTION)
    return (
        TensorDataset(data["features"][cut:], data["labels"][cut:]),
        TensorDataset(data["features"][:cut], data["labels"][:cut]),
    )


def train(data_dir: Path, out_dir: Path, epochs: int) -> None:
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(1234)
    train_set, val_set = load_data(data_dir)
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] | None = (
        DistributedSampler(train_set, seed=1234) if distributed else None
    )
    loader = DataLoader(train_set, batch_size=BATCH, shuffle=sampler is None, sampler=sampler)
    val_sampler: DistributedSampler[tuple[torch.Tensor, ...]] | None = (
        DistributedSampler(val_set, shuffle=False) if distributed else None
    )
    val_loader = DataLoader(val_set, batch_size=BATCH, sampler=val_sampler)
    net = nn.Sequential(
        nn.Linear(FEATURES, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, CLASSES)
    )
    model: nn.Module = DistributedDataParallel(net) if distributed else net
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    writer = SummaryWriter(str(out_dir / "tb")) if rank == 0 else None
    step = 0
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        for features, labels in loader:
            first_step()
            loss = F.cross_entropy(model(features), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if writer is not None and step % 50 == 0:
                writer.add_scalar("train_loss", loss.item(), step)
        val_loss, val_acc = validate(net, val_loader, distributed)
        if writer is not None:
            writer.add_scalar("val_loss", val_loss, step)
            writer.add_scalar("val_acc", val_acc, step)
            print(f"epoch {epoch}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}", flush=True)
    if rank == 0:
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save(state, out_dir / "checkpoints" / "last.ckpt")
    if writer is not None:
        writer.close()
    if distributed:
        dist.destroy_process_group()


def validate(net: nn.Module, loader: DataLoader, distributed: bool) -> tuple[float, float]:
    """Mean loss and accuracy over the validation set (summed over ranks under DDP)."""
    net.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    with torch.no_grad():
        for features, labels in loader:
            logits = net(features)
            totals[0] += F.cross_entropy(logits, labels, reduction="sum").item()
            totals[1] += (logits.argmax(dim=1) == labels).sum().item()
            totals[2] += len(labels)
    if distributed:
        dist.all_reduce(totals)
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    train(args.data_dir, args.out_dir, args.epochs)


if __name__ == "__main__":
    main()
