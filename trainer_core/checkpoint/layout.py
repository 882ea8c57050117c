"""What goes into a checkpoint and how it is restored (the layout: docs/architecture.md).

`dump` assembles the trainer's state (tensors referenced, not copied: `io.save` snapshots them; values that
take long to convert are `Later`s, converted on the writer thread); `restore`
puts a state that `resume.pick` read back into the trainer: the saved config is compared before any tensor
is loaded, so a checkpoint of another run is the named refusal, never a `state_dict` traceback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from trainer_core import optim, seed
from trainer_core.checkpoint.resume import LAST_NAME, has_checkpoints, pick
from trainer_core.checkpoint.snapshot import Later
from trainer_core.errors import CheckpointError, MisconfigurationError
from trainer_core.loops.data import EpochShuffleSampler, _unseeded_shuffle
from trainer_core.plain_types import to_plain

if TYPE_CHECKING:
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def dump(trainer: Trainer, weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint dict of the trainer's current state (tensors referenced, not copied)."""
    model = trainer.lightning_module
    progress = trainer.progress
    state: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "epoch": progress.epoch,
        "global_step": progress.global_step,
        "state_dict": model.state_dict(),
        "loops": progress.state_dict(),
    }
    if not weights_only:
        state.update(_training_state(trainer))
    run_config = trainer.preemption.run_config
    if run_config is not None:
        state["run_config"] = run_config.checkpoint_entry()
    state["hyper_parameters"] = to_plain(dict(model.hparams))
    state["hparams_name"] = "hparams"
    datamodule = trainer.datamodule
    if datamodule is not None:
        if datamodule.hparams:
            state["datamodule_hyper_parameters"] = to_plain(dict(datamodule.hparams))
        state[type(datamodule).__qualname__] = datamodule.state_dict()
        datamodule.on_save_checkpoint(state)
    if trainer._dispatch is not None:
        trainer._dispatch.all_callbacks("on_save_checkpoint", state)
    model.on_save_checkpoint(state)
    return state


def _training_state(trainer: Trainer) -> dict[str, Any]:
    callback_states = ((cb, cb.state_dict()) for cb in trainer.callbacks)
    callbacks = {cb.state_key: state for cb, state in callback_states if state}  # keys only for the kept
    progress = trainer.progress
    # Inside an interrupted validation, resume runs it again: from the RNG states it started with.
    rng = progress.rng_at_validation_start if progress.validation_pending else None
    return {
        "optimizer_states": [optimizer.state_dict() for optimizer in trainer.optimizers],
        "lr_schedulers": optim.scheduler_states(trainer.lr_scheduler_configs),
        "callbacks": callbacks,
        "precision": trainer.precision_plugin.state_dict() if trainer.precision_plugin is not None else {},
        # Converted to checkpoint types on the writer thread: the save point takes the generators. states.
        "rng_states": rng if rng is not None else Later(seed.plain_rng_state, seed.raw_rng_state()),
        "sampler": _sampler_state(trainer),
        # The training epoch's running metric sums of every rank (a collective: every rank saves).
        "metrics": {
            "world_size": trainer.world_size,
            "ranks": trainer.collectives.all_gather_object(trainer._metrics.state_dict("train")),
        },
        # The metrics callbacks and monitored schedulers read, so a resumed run starts where it stopped.
        # Detached, not moved: the snapshot copies CUDA values without waiting for the device.
        "callback_metrics": {k: v.detach() for k, v in trainer.callback_metrics.items()},
    }


def _sampler_state(trainer: Trainer) -> dict[str, Any]:
    """Where the epoch's order stands (the loop progress holds the batch index, which resume reads).

    `samples_seen` counts the epoch's samples over all ranks and `order` names the epoch's global order: with
    both, a mid-epoch position carries over to another number of ranks (`_carry_position`).
    """
    progress, loader = trainer.progress, trainer.train_dataloader
    batch_size = getattr(loader, "batch_size", None)
    seen = progress.epoch_batches * batch_size * trainer.world_size if batch_size else None
    return {
        "shuffle_seed": progress.shuffle_seed,
        "epoch": progress.epoch,
        "batch_index": progress.epoch_batches,
        "world_size": trainer.world_size,
        "samples_seen": seen,
        "order": sample_order(loader, progress.shuffle_seed),
    }


def sample_order(loader: Any, shuffle_seed: int | None) -> list[Any] | None:
    """The epoch's order over all ranks, as `["shuffle", seed]` or `["sequential"]`; None when unknown.

    The trainer's seeded shuffle (`EpochShuffleSampler`, one rank) and a `DistributedSampler` with the same
    seed draw the same permutation of the dataset, and rank r of W reads its positions r, r + W, ...: the
    samples seen so far are the first `samples_seen` of it, whatever the number of ranks.
    """
    sampler = getattr(loader, "sampler", None)
    if type(sampler) is DistributedSampler:
        return ["shuffle", int(sampler.seed)] if sampler.shuffle else ["sequential"]
    if isinstance(sampler, EpochShuffleSampler):
        return ["shuffle", sampler.seed]
    if type(sampler) is RandomSampler and _unseeded_shuffle(sampler) and shuffle_seed is not None:
        return ["shuffle", shuffle_seed]  # one rank, before fit makes it an EpochShuffleSampler
    if type(sampler) is SequentialSampler:
        return ["sequential"]
    return None


def last_path(trainer: Trainer) -> Path:
    """Where `last.ckpt` goes: the checkpoint callback's directory, else `default_root_dir/checkpoints`."""
    callback = trainer.checkpoint_callback
    directory = getattr(callback, "dirpath", None) if callback is not None else None
    if not directory:
        directory = os.path.join(trainer.default_root_dir, "checkpoints")
    return Path(directory) / LAST_NAME


def save_last(trainer: Trainer) -> Path:
    """Every rank: write the full state to `last.ckpt` (atomically, rank zero writes) and return its path.

    The preemption checkpoint is always `last.ckpt`, replaced in place, so such files never pile up; the
    checkpoint callback records it as its last file and keeps it current from then on.
    """
    path = last_path(trainer)
    callback = trainer.checkpoint_callback
    if callback is not None and hasattr(callback, "adopt_last"):
        callback.adopt_last(trainer, str(path))  # before the save, so the file's own callback state says so
    trainer.save_checkpoint(path)
    return path


def resolve_path(trainer: Trainer, ckpt_path: Any) -> str:
    """`ckpt_path` as a file: a path, "last" (the `last.ckpt` of the run's checkpoint directory) or "best"."""
    if ckpt_path == "best":
        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not best:
            raise MisconfigurationError(
                'ckpt_path="best" but no ModelCheckpoint has saved a best checkpoint; fit first, or pass a '
                "path"
            )
        return str(best)
    if ckpt_path == "last":
        return _last_checkpoint(trainer)
    return os.fspath(ckpt_path)


def _last_checkpoint(trainer: Trainer) -> str:
    """The `last.ckpt` of the first checkpoint directory that holds any checkpoint (resume falls back from
    a missing or damaged `last.ckpt` to the newest intact file beside it)."""
    candidates = []
    for callback in trainer.checkpoint_callbacks:
        for attribute in ("last_model_path", "dirpath"):
            value = getattr(callback, attribute, None)
            if value:
                candidates.append(Path(value) if attribute == "last_model_path" else Path(value) / LAST_NAME)
    candidates.append(Path(trainer.default_root_dir) / "checkpoints" / LAST_NAME)
    candidates.append(Path(trainer.log_dir) / "checkpoints" / LAST_NAME)
    for candidate in candidates:
        if candidate.is_file() or has_checkpoints(candidate.parent):
            return str(candidate.with_name(LAST_NAME))
    raise CheckpointError(
        f'ckpt_path="last" but no checkpoint exists (looked at {[str(c) for c in candidates]}); save one '
        "with ModelCheckpoint(save_last=True), or pass a path"
    )


def restore(trainer: Trainer, ckpt_path: Any, full: bool) -> str:
    """Resume from `ckpt_path` (the weights; with `full`, for fit, the whole training state); the file used.

    The file is picked by `resume.pick` (the newest intact one when `last.ckpt` is asked for), and its saved
    run config is compared before any tensor is loaded.
    """
    requested = resolve_path(trainer, ckpt_path)
    collectives = trainer.collectives if trainer.world_size > 1 else None
    path, state = pick(requested, full, collectives, trainer.is_global_zero)
    if full and trainer.preemption.run_config is not None:
        trainer.preemption.run_config.check(state.get("run_config"), path)
    model = trainer.lightning_module
    model.on_load_checkpoint(state)
    _load_weights(model, state, path)
    datamodule = trainer.datamodule
    if datamodule is not None:
        datamodule.on_load_checkpoint(state)
        if type(datamodule).__qualname__ in state:
            datamodule.load_state_dict(state[type(datamodule).__qualname__])
    if full:
        _restore_training_state(trainer, state, path)
    log.info("restored %s from %s", "the training state" if full else "the weights", path)
    return path


def _load_weights(model: torch.nn.Module, state: dict[str, Any], path: str) -> None:
    """`load_state_dict`, with a model of another shape named as such instead of torch's traceback."""
    if "state_dict" not in state:
        raise CheckpointError(f"Checkpoint {path!r} holds no state_dict: it is not a trainer checkpoint")
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise CheckpointError(
            f"Checkpoint {path!r} holds the weights of another model ({'; '.join(details)[:400]}). Resume "
            "with the model it was written by, or start a new run"
        ) from None


def _restore_training_state(trainer: Trainer, state: dict[str, Any], path: str) -> None:
    if trainer._dispatch is not None:
        trainer._dispatch.all_callbacks("on_load_checkpoint", state)
    saved_callbacks = state.get("callbacks", {})
    for callback in trainer.callbacks:
        if callback.state_key in saved_callbacks:
            callback.load_state_dict(saved_callbacks[callback.state_key])
    _restore_optimizers(trainer, state["optimizer_states"], path)
    optim.load_scheduler_states(trainer.lr_scheduler_configs, state.get("lr_schedulers", []))
    if trainer.precision_plugin is not None:
        trainer.precision_plugin.load_state_dict(state.get("precision", {}))
    trainer.progress.load_state_dict(state["loops"])
    _carry_position(trainer, state.get("sampler", {}), path)
    _restore_metric_sums(trainer, state.get("metrics"))
    trainer._restored_rng = state.get("rng_states")
    trainer._restored_metrics = dict(state.get("callback_metrics", {}))
    trainer._metrics.restore(trainer._restored_metrics)


def _restore_optimizers(trainer: Trainer, states: list[dict[str, Any]], path: str) -> None:
    if len(states) != len(trainer.optimizers):
        raise CheckpointError(
            f"{path} holds {len(states)} optimizer states but configure_optimizers returned "
            f"{len(trainer.optimizers)} optimizers; resume with the same configure_optimizers"
        )
    for optimizer, optimizer_state in zip(trainer.optimizers, states):
        optimizer.load_state_dict(optimizer_state)


def _carry_position(trainer: Trainer, sampler: dict[str, Any], path: str) -> None:
    """A mid-epoch position written by another number of ranks, in this run's batches; else an error.

    Exact when the epoch's global order is the same (the same seeded shuffle, or sequential) and the samples
    seen split into whole batches of every rank: the epoch then goes on with the samples not seen yet, none
    skipped or repeated (DistributedSampler's padding of a dataset that does not divide by the number of
    ranks aside). The weights cannot equal a run that never changed its number of ranks: each step averages
    the gradients of another number of samples.
    """
    progress, saved = trainer.progress, sampler.get("world_size")
    if saved is None or saved == trainer.world_size or not progress.resumes_mid_epoch:
        return
    batch_size = getattr(trainer.train_dataloader, "batch_size", None)
    seen: int | None = sampler.get("samples_seen")
    per_step = (batch_size or 0) * trainer.world_size
    order = sample_order(trainer.train_dataloader, progress.shuffle_seed)
    problem = None
    if progress.accumulated_batches:
        problem = "it was written inside a gradient accumulation window"
    elif order is None or order != sampler.get("order"):
        problem = f"the epoch's sample order differs (saved {sampler.get('order')}, now {order})"
    elif not seen or not per_step or seen % per_step:
        problem = f"its {seen} samples seen do not split into batches of {batch_size} on each rank"
    if problem is not None:
        raise CheckpointError(
            f"{path} was written by {saved} rank(s) in the middle of epoch {progress.epoch}; this run has "
            f"{trainer.world_size} rank(s) and cannot continue that position: {problem}. Resume with "
            f"{saved} rank(s), or from a checkpoint written at an epoch end"
        )
    batches = int(seen or 0) // per_step
    progress.total_batches += batches - progress.epoch_batches
    progress.epoch_batches = batches
    log.info(
        "%s was written by %d rank(s) after %d samples of epoch %d; %d rank(s) go on from batch %d",
        path, saved, seen, progress.epoch, trainer.world_size, batches,
    )  # fmt: skip


def _restore_metric_sums(trainer: Trainer, saved: dict[str, Any] | None) -> None:
    """This rank's running training-epoch sums; from another number of ranks, all of them on rank zero."""
    if not saved or not saved.get("ranks"):
        return
    states: list[dict[str, Any]] = saved["ranks"]
    if saved.get("world_size") == trainer.world_size:
        mine = states[trainer.global_rank]
    else:  # exact for sync_dist metrics (their sums add up over ranks); rank-local ones are approximate
        mine = _merged_metric_sums(states) if trainer.global_rank == 0 else {}
    trainer._metrics.load_state_dict(mine, trainer.device)


def _merged_metric_sums(states: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for state in states:
        for name, entry in state.items():
            if name not in merged:
                merged[name] = {**entry, "pending": list(entry["pending"]), "weights": list(entry["weights"])}
                continue
            into = merged[name]
            into["pending"] += entry["pending"]
            into["weights"] += entry["weights"]
            into["weight"] += entry["weight"]
            into["total"] = _combined(into["total"], entry["total"], entry["spec"]["reduce"])
    return merged


def _combined(a: torch.Tensor | None, b: torch.Tensor | None, reduce: str) -> torch.Tensor | None:
    if a is None or b is None:
        return a if b is None else b
    if reduce == "max":
        return torch.maximum(a, b)
    return torch.minimum(a, b) if reduce == "min" else a + b
