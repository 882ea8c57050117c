"""What checkpoints cost a GPU training loop: the GPT-like model on one GPU, lean and with what users turn on.

Profiles: `lean` (no logger, no checkpoints, no progress bar) and `user` (TensorBoard every 50 steps, a
progress bar, a full checkpoint every 50 steps, with `save_last=True` for the frameworks). Implementations:
`hand` (a hand-written loop; in `user`, a plain `torch.save` of model and optimizer), `hand_fsync` (the
same, then an fsync, as a durable save needs), `tc` (the trainer core) and `lightning`. One run per
invocation, one JSON line appended to `--out`; `bench/gpu_checkpoint.sh` interleaves them.

    python bench/gpu_checkpoint.py --impl tc --profile user --out results.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import DataLoader

from bench.gpu_ddp import GPT, RandomTokens, StepClock, gpt_loss

EVERY = 50  # steps between logger writes and between checkpoints in the `user` profile


def run_hand(args: argparse.Namespace, clock: StepClock, fsync: bool) -> None:
    device = torch.device(args.device)
    model = GPT(seq=args.seq).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    loader = DataLoader(RandomTokens(args.batch * 64, args.seq), args.batch, shuffle=True, drop_last=True)
    user = args.profile == "user"
    writer = bar = None
    if user:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        writer = SummaryWriter(str(Path(args.workdir) / "tb"))
        bar = tqdm(total=args.warmup + args.steps)
    step = 0
    while step < args.warmup + args.steps:
        for batch in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = gpt_loss(model, batch.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if writer is not None and bar is not None:
                bar.update(1)
                if step % EVERY == 0:
                    value = loss.item()
                    writer.add_scalar("train_loss", value, step)
                    bar.set_postfix(loss=f"{value:.3f}")
                    _save(model, optimizer, step, Path(args.workdir) / "hand.ckpt", fsync)
            clock.after_step(step)
            if step == args.warmup + args.steps:
                break


def _save(model: torch.nn.Module, optimizer: Any, step: int, path: Path, fsync: bool) -> None:
    state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    if not fsync:
        torch.save(state, path)
        return
    with open(path, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    user = args.profile == "user"
    return {
        "accelerator": "gpu" if args.device == "cuda" else "cpu",
        "devices": 1,
        "precision": "bf16-mixed",
        "max_steps": args.warmup + args.steps,
        "enable_progress_bar": user,
        "enable_model_summary": False,
        "enable_checkpointing": user,
        "log_every_n_steps": EVERY,
        "default_root_dir": args.workdir,
        "num_sanity_val_steps": 0,
    }


def _framework(impl: str) -> SimpleNamespace:
    """The trainer core or Lightning: the same names, so one function runs both."""
    if impl == "tc":
        import trainer_core as tc

        return SimpleNamespace(
            Module=tc.TrainingModule,
            Callback=tc.callbacks.Callback,
            ModelCheckpoint=tc.callbacks.ModelCheckpoint,
            TensorBoardLogger=tc.loggers.TensorBoardLogger,
            Trainer=tc.Trainer,
        )
    import lightning.pytorch as pl

    return SimpleNamespace(
        Module=pl.LightningModule,
        Callback=pl.Callback,
        ModelCheckpoint=pl.callbacks.ModelCheckpoint,
        TensorBoardLogger=pl.loggers.TensorBoardLogger,
        Trainer=pl.Trainer,
    )


def run_framework(args: argparse.Namespace, clock: StepClock) -> None:
    """`fit` with the trainer core (`--impl tc`) or Lightning, in the chosen profile."""
    fw = _framework(args.impl)

    class Module(fw.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = GPT(seq=args.seq)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            loss = gpt_loss(self.model, batch)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=3e-4)

    class Clock(fw.Callback):  # type: ignore[misc, name-defined]
        def on_train_batch_end(self, trainer: Any, *_: Any) -> None:
            clock.after_step(trainer.global_step)

    callbacks: list[Any] = [Clock()]
    logger: Any = False
    if args.profile == "user":
        directory = Path(args.workdir) / "ckpts"
        callbacks.append(fw.ModelCheckpoint(dirpath=directory, every_n_train_steps=EVERY, save_last=True))
        logger = fw.TensorBoardLogger(args.workdir, name="tb")
    loader = DataLoader(RandomTokens(args.batch * 64, args.seq), args.batch, shuffle=True, drop_last=True)
    trainer = fw.Trainer(**_settings(args), callbacks=callbacks, logger=logger)
    trainer.fit(Module(), loader)
    if args.impl == "tc":
        from trainer_core.checkpoint import io

        print("writer statistics:", json.dumps(dataclasses.asdict(io.statistics())), flush=True)


def _checkpoint_mib(args: argparse.Namespace) -> float | None:
    files = [*Path(args.workdir).glob("hand.ckpt"), *Path(args.workdir).glob("ckpts/last.ckpt")]
    return files[0].stat().st_size / 2**20 if files else None


def report(path: Path) -> str:
    """A Markdown table of every run in `path`: medians per implementation and profile, with the ratios."""
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    samples: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        samples.setdefault((run["impl"], run["profile"]), []).append(run["ms_per_step"])
    median = {key: statistics.median(values) for key, values in samples.items()}
    hand_user = median.get(("hand", "user"))
    lines = [
        f"GPU: {runs[0]['gpu']}; GPT-like 12x768, seq {runs[0].get('seq', 512)}, batch {runs[0]['batch']}, "
        f"bf16-mixed, AdamW; {runs[0]['steps']} measured steps after 10 warm-up steps; checkpoint "
        f"{max((r.get('ckpt_mib') or 0) for r in runs):.0f} MiB.",
        "",
        "| implementation | profile | runs | ms/step (median) | min | max | vs own lean | vs hand user |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (impl, profile), values in sorted(samples.items()):
        lean = median.get((impl if impl != "hand_fsync" else "hand", "lean"))
        own = f"{median[(impl, profile)] / lean:.3f}x" if lean else ""
        versus = f"{median[(impl, profile)] / hand_user:.3f}x" if hand_user and profile == "user" else ""
        lines.append(
            f"| {impl} | {profile} | {len(values)} | {median[(impl, profile)]:.2f} | {min(values):.2f} | "
            f"{max(values):.2f} | {own} | {versus} |"
        )
    hand_lean, tc_lean = median.get(("hand", "lean")), median.get(("tc", "lean"))
    if hand_lean and tc_lean:
        lines += [
            "",
            f"Trainer core lean vs hand-written lean: {tc_lean / hand_lean:.3f}x (target <= 1.01x).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", choices=["hand", "hand_fsync", "tc", "lightning"])
    parser.add_argument("--profile", choices=["lean", "user"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/gpu-ckpt-bench")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of the script, not a measurement")
    parser.add_argument("--out", help="append this run's result to this JSON-lines file")
    parser.add_argument("--report", help="print the Markdown table of a JSON-lines file and exit")
    args = parser.parse_args()
    if args.report:
        print(report(Path(args.report)), end="")
        return
    if not (args.impl and args.profile and args.out):
        parser.error("--impl, --profile and --out are needed to run")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    clock = StepClock(args.warmup, args.steps)
    if args.impl in ("hand", "hand_fsync"):
        run_hand(args, clock, fsync=args.impl == "hand_fsync")
    else:
        run_framework(args, clock)
    record = {
        "impl": args.impl,
        "profile": args.profile,
        "ms_per_step": 1000 * clock.seconds / args.steps,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "ckpt_mib": _checkpoint_mib(args),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "none (cpu smoke run)",
    }
    with open(args.out, "a") as file:
        file.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
