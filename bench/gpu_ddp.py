"""GPU DDP throughput: a GPT-like model trained by hand-written DDP, the trainer core and Lightning.

One process per GPU, started by `torchrun`; each invocation measures one implementation and appends one JSON
line to `--out`. `bench/gpu_suite.sh` runs the implementations interleaved on 1, 2, 4 and 8 GPUs (as many as
the machine has).

The hand-written loop wraps the model in `DistributedDataParallel` only with more than one process, as a
script written for one or several GPUs does (`if world_size > 1: model = DDP(model)`); the trainer core and
Lightning do the same on one device. So every implementation's 1-GPU number is a plain single-GPU loop, and
the N-GPU / 1-GPU scaling of each compares like with like.

    torchrun --nproc-per-node=2 bench/gpu_ddp.py --impl tc --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

VOCAB = 50304


class Block(nn.Module):
    """A pre-norm transformer block with causal self-attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """12 layers, width 768, 12 heads: the GPT-2 small shape."""

    def __init__(self, layers: int = 12, width: int = 768, heads: int = 12, seq: int = 512) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(seq, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(pos))))


def gpt_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


class TinyMLP(nn.Module):
    """The tiny model of the CPU benchmarks (32 -> 64 -> 10): framework overhead dominates its steps."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(batch[:, :32]), batch[:, 32].long())


class TinySamples(Dataset[torch.Tensor]):
    """20,000 rows of 32 features and a class label in the last column."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(20_000, 32, generator=generator)
        labels = torch.randint(0, 10, (20_000, 1), generator=generator).float()
        self.data = torch.cat([features, labels], dim=1)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


def workload(
    args: argparse.Namespace,
) -> tuple[nn.Module, Callable[..., torch.Tensor], Dataset[torch.Tensor]]:
    """The model, its loss and its data for `--model`."""
    if args.model == "tiny":
        return TinyMLP(), tiny_loss, TinySamples()
    return GPT(seq=args.seq), gpt_loss, RandomTokens(args.batch * 64, args.seq)


class RandomTokens(Dataset[torch.Tensor]):
    """Fixed random token sequences (seeded), so every implementation sees the same data."""

    def __init__(self, samples: int, seq: int) -> None:
        self.data = torch.randint(0, VOCAB, (samples, seq + 1), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


class StepClock:
    """Wall time of the steps after `warmup`, with the device synchronised at both ends."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.start, self.seconds = warmup, steps, 0.0, math.nan

    def after_step(self, step: int) -> None:
        if step == self.warmup:
            synchronize()
            self.start = time.perf_counter()
        elif step == self.warmup + self.steps:
            synchronize()
            self.seconds = time.perf_counter() - self.start


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def accelerator() -> str:
    """GPUs when there are any; the CPU (Gloo) path exists so the script can be smoke-tested anywhere."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def run_hand(args: argparse.Namespace, clock: StepClock) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data.distributed import DistributedSampler

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    on_gpu = accelerator() == "gpu"
    dist.init_process_group("nccl" if on_gpu else "gloo")
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(local_rank)
    network, loss_fn, dataset = workload(args)
    model = network.to(device)
    if dist.get_world_size() > 1:
        model = DDP(model, device_ids=[local_rank] if on_gpu else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    loader = DataLoader(dataset, args.batch, sampler=DistributedSampler(dataset), drop_last=True)
    step = 0
    while step < args.warmup + args.steps:
        for batch in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = loss_fn(model, batch.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if rank == 0 and step % 50 == 0:
                print(f"step {step} loss {loss.item():.3f}", flush=True)
            clock.after_step(step)
            if step == args.warmup + args.steps:
                break
    dist.destroy_process_group()


def run_trainer_core(args: argparse.Namespace, clock: StepClock) -> None:
    import trainer_core as tc

    network, loss_fn, dataset = workload(args)

    class Module(tc.TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = network

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            loss = loss_fn(self.model, batch)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=3e-4)

    class Clock(tc.callbacks.Callback):
        def on_train_batch_end(self, trainer: Any, *_: Any) -> None:
            clock.after_step(trainer.global_step)

    loader = DataLoader(dataset, args.batch, shuffle=True, drop_last=True)
    trainer = tc.Trainer(
        accelerator=accelerator(),
        devices=int(os.environ["WORLD_SIZE"]),
        strategy="ddp",
        precision="bf16-mixed",
        max_steps=args.warmup + args.steps,
        callbacks=[Clock()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=args.workdir,
    )
    trainer.fit(Module(), loader)


def run_lightning(args: argparse.Namespace, clock: StepClock) -> None:
    import lightning.pytorch as pl

    network, loss_fn, dataset = workload(args)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = network

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            loss = loss_fn(self.model, batch)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=3e-4)

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer: Any, *_: Any) -> None:
            clock.after_step(trainer.global_step)

    loader = DataLoader(dataset, args.batch, shuffle=True, drop_last=True)
    trainer = pl.Trainer(
        accelerator=accelerator(),
        devices=int(os.environ["WORLD_SIZE"]),
        strategy="ddp",
        precision="bf16-mixed",
        max_steps=args.warmup + args.steps,
        callbacks=[Clock()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=args.workdir,
    )
    trainer.fit(Module(), loader)


IMPLEMENTATIONS: dict[str, Callable[[argparse.Namespace, StepClock], None]] = {
    "hand": run_hand,
    "tc": run_trainer_core,
    "lightning": run_lightning,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", choices=sorted(IMPLEMENTATIONS), required=True)
    parser.add_argument("--model", choices=["gpt", "tiny"], default="gpt")
    parser.add_argument("--batch", type=int, default=16, help="samples per GPU per step")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--workdir", default="/tmp/gpu-bench")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    clock = StepClock(args.warmup, args.steps)
    IMPLEMENTATIONS[args.impl](args, clock)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if int(os.environ.get("RANK", "0")) == 0:
        samples_per_s = args.batch * world_size * args.steps / clock.seconds
        record = {"model": args.model, "impl": args.impl, "gpus": world_size, "samples_per_s": samples_per_s}
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
