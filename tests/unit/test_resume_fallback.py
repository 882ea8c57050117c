"""Resume never loads a damaged checkpoint: it falls back through every intact one, newest first, and names
what it skipped; a checkpoint of another run is refused before any weight is loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import trainer_core as tc
from tests.unit.helpers import Classifier, loader, quiet_trainer, weights
from trainer_core import checkpoint as checkpoint_io
from trainer_core.checkpoint import integrity, resume
from trainer_core.errors import NoCheckpointToResume
from trainer_core.preemption import RunConfig


def _fit_with_checkpoints(tmp_path: Path, epochs: int, **checkpoint: Any) -> Path:
    directory = tmp_path / "ckpts"
    settings: dict[str, Any] = {"dirpath": directory, "save_last": True, "save_top_k": -1, **checkpoint}
    callback = tc.callbacks.ModelCheckpoint(**settings)
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, enable_checkpointing=True, callbacks=[callback])
    trainer.fit(Classifier(), loader(n=64))
    return directory


def _replace_with(path: Path, data: bytes) -> None:
    """A new file at `path` (another inode: names linked to the old file keep the old bytes)."""
    path.unlink()
    path.write_bytes(data)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    _replace_with(path, data[: len(data) // 2])


def _resume(tmp_path: Path, ckpt_path: Any, caplog: pytest.LogCaptureFixture, epochs: int = 4) -> tc.Trainer:
    trainer = quiet_trainer(tmp_path, max_epochs=epochs)
    with caplog.at_level(logging.WARNING):
        trainer.fit(Classifier(), loader(n=64), ckpt_path=ckpt_path)
    return trainer


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return " | ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_the_manifest_records_the_position_and_the_digest_of_the_bytes(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=2)
    manifest = integrity.read_manifest(directory / "last.ckpt")
    assert manifest is not None
    assert manifest["global_step"] == 8 and manifest["epoch"] == 1 and manifest["total_batches"] == 8
    data = (directory / "last.ckpt").read_bytes()
    # The tiny model's tensors are small records: every byte goes into the SHA-256.
    assert manifest["record_crc32"] == []
    assert manifest["size"] == len(data) and manifest["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_torn_last_falls_back_to_the_newest_intact_checkpoint_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=3)
    _truncate(directory / "last.ckpt")
    trainer = _resume(tmp_path, directory / "last.ckpt", caplog)
    # The newest top-k file is epoch=2 (step 12): resume continues from there, one epoch to go.
    assert trainer.ckpt_path == str(directory / "epoch=2-step=12.ckpt")
    assert trainer.global_step == 16
    warning = _warnings(caplog)
    assert "last.ckpt for resume: size" in warning and "Resuming from" in warning
    assert "epoch=2-step=12.ckpt" in warning


def test_last_and_the_top_k_file_of_one_save_point_are_one_file_so_damage_falls_back_a_save_point(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=3)
    last, newest = directory / "last.ckpt", directory / "epoch=2-step=12.ckpt"
    assert last.read_bytes() == newest.read_bytes()
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01
    with open(last, "r+b") as file:  # in place: both names see it
        file.write(bytes(data))
    trainer = _resume(tmp_path, last, caplog)
    assert trainer.ckpt_path == str(directory / "epoch=1-step=8.ckpt")
    assert "content digest mismatch" in _warnings(caplog)


def _regions(path: Path) -> dict[str, int]:
    """Offsets of one byte in each region of a torch.save zip file."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        records = {info.filename.rsplit("/", 1)[-1]: info for info in archive.infolist()}
        central = data.rindex(b"PK\x01\x02")
    pickle_record = records["data.pkl"]
    tensor_record = next(info for name, info in records.items() if name.isdigit())
    return {
        "local header": 10,
        "pickle": pickle_record.header_offset + 30 + len(pickle_record.filename) + 5,
        "tensor data": tensor_record.header_offset + 30 + len(tensor_record.filename) + 64 + 3,
        "central directory": central + 20,
        "last byte": len(data) - 1,
    }


@pytest.mark.parametrize(
    "region", ["local header", "pickle", "tensor data", "central directory", "last byte"]
)
def test_a_flipped_byte_in_any_region_is_a_named_rejection_never_a_silent_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, region: str
) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=3)
    last = directory / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[_regions(last)[region]] ^= 0x10
    _replace_with(last, bytes(data))
    assert integrity.check(last) == "content digest mismatch"
    trainer = _resume(tmp_path, last, caplog)
    assert trainer.ckpt_path == str(directory / "epoch=2-step=12.ckpt")
    assert f"Skipping checkpoint {last} for resume: content digest mismatch" in _warnings(caplog)


def test_a_missing_last_resumes_from_the_newest_top_k_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=3)
    (directory / "last.ckpt").unlink()
    checkpoint_io.manifest_path(directory / "last.ckpt").unlink()
    trainer = _resume(tmp_path, directory / "last.ckpt", caplog)
    assert trainer.ckpt_path == str(directory / "epoch=2-step=12.ckpt") and trainer.global_step == 16
    assert "last.ckpt for resume: missing" in _warnings(caplog)


def test_ckpt_path_last_finds_the_directory_when_last_is_missing(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=2)
    (directory / "last.ckpt").unlink()
    callback = tc.callbacks.ModelCheckpoint(dirpath=directory, save_last=True, save_top_k=-1)
    trainer = quiet_trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[callback])
    trainer.fit(Classifier(), loader(n=64), ckpt_path="last")
    assert trainer.ckpt_path == str(directory / "epoch=1-step=8.ckpt") and trainer.global_step == 12


class _NotPlain:
    """Pickled into a checkpoint, refused by weights_only loading."""


def test_a_last_that_verifies_but_does_not_unpickle_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=2)
    last = directory / "last.ckpt"
    last.unlink()
    state = torch.load(directory / "epoch=1-step=8.ckpt", weights_only=True)
    checkpoint_io.save_atomic({**state, "extra": _NotPlain()}, last, sync=True)  # digest and manifest fine
    assert integrity.check(last) is None
    trainer = _resume(tmp_path, last, caplog, epochs=3)
    assert trainer.ckpt_path == str(directory / "epoch=1-step=8.ckpt")
    assert "last.ckpt for resume: does not load (UnpicklingError)" in _warnings(caplog)


def test_a_weights_only_file_is_skipped_when_training_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = _fit_with_checkpoints(tmp_path, epochs=1)
    light = tmp_path / "light"
    callback = tc.callbacks.ModelCheckpoint(dirpath=light, save_weights_only=True, save_top_k=-1)
    trainer = quiet_trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[callback])
    trainer.fit(Classifier(), loader(n=64), ckpt_path=full / "last.ckpt")
    (light / "last.ckpt").write_bytes(b"")  # torn
    with pytest.raises(NoCheckpointToResume, match=r"epoch=1-step=8\.ckpt \(holds weights only"):
        _resume(tmp_path, light / "last.ckpt", caplog)


def test_newest_is_chosen_by_step_not_by_modification_time(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=3)
    older = directory / "epoch=0-step=4.ckpt"
    os.utime(older)  # the newest modification time, but the oldest step
    names = [p.name for p in resume.candidates(directory)]
    assert names == ["last.ckpt", "epoch=2-step=12.ckpt", "epoch=1-step=8.ckpt", "epoch=0-step=4.ckpt"]


def test_no_intact_checkpoint_names_every_file_tried_and_why(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=2)
    _truncate(directory / "epoch=1-step=8.ckpt")
    (directory / "last.ckpt").unlink()
    (directory / "epoch=0-step=4.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(NoCheckpointToResume) as caught:
        quiet_trainer(tmp_path).fit(Classifier(), loader(n=64), ckpt_path=directory / "last.ckpt")
    message = str(caught.value)
    assert message.startswith(f"No intact checkpoint to resume from in {str(directory)!r}: tried ")
    for name in ("epoch=1-step=8.ckpt (size", "last.ckpt (missing)", "epoch=0-step=4.ckpt (size"):
        assert name in message
    assert [Path(name).name for name, _ in caught.value.tried] == [
        "last.ckpt",
        "epoch=1-step=8.ckpt",
        "epoch=0-step=4.ckpt",
    ]


def test_an_explicit_unverified_file_is_refused_without_fallback(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=2)
    target = directory / "epoch=1-step=8.ckpt"
    _truncate(target)
    with pytest.raises(tc.CheckpointError, match=r"epoch=1-step=8\.ckpt.*fails verification"):
        quiet_trainer(tmp_path).fit(Classifier(), loader(n=64), ckpt_path=target)


def test_a_checkpoint_without_manifest_is_accepted_when_complete(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=1)
    checkpoint_io.manifest_path(directory / "last.ckpt").unlink()
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(Classifier(), loader(n=64), ckpt_path=directory / "last.ckpt")
    assert trainer.global_step == 8
    assert torch.load(directory / "last.ckpt", weights_only=True)["global_step"] == 4


def test_a_checkpoint_with_a_manifest_of_an_earlier_version_still_loads(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=1)
    last = directory / "last.ckpt"
    with zipfile.ZipFile(last) as archive:
        listing = "\n".join(f"{r.filename}:{r.file_size}:{r.CRC:08x}" for r in archive.infolist())
    manifest = json.loads(checkpoint_io.manifest_path(last).read_text())
    del manifest["sha256"]
    manifest["records_sha256"] = hashlib.sha256(listing.encode()).hexdigest()
    checkpoint_io.manifest_path(last).write_text(json.dumps(manifest))
    assert integrity.check(last) is None
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(Classifier(), loader(n=64), ckpt_path=last)
    assert trainer.ckpt_path == str(last) and trainer.global_step == 8


def test_another_models_checkpoint_is_a_named_error_not_a_state_dict_traceback(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=1)
    model = Classifier(hidden=32)
    with pytest.raises(tc.CheckpointError, match=r"last\.ckpt.*weights of another model.*size mismatch"):
        quiet_trainer(tmp_path, max_epochs=2).fit(model, loader(n=64), ckpt_path=directory / "last.ckpt")


def _fit_with_config(
    tmp_path: Path, config: dict[str, Any], epochs: int, model: Classifier | None = None, **extra: Any
) -> tc.Trainer:
    checkpoint = tc.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=epochs,
        enable_checkpointing=True,
        callbacks=[checkpoint],
        plugins=[RunConfig(config=config, **extra)],
    )
    trainer.fit(model or Classifier(), loader(n=64), ckpt_path="last" if epochs > 1 else None)
    return trainer


def test_a_checkpoint_of_another_config_is_refused_naming_the_differing_keys(tmp_path: Path) -> None:
    config = {"model": {"lr": 0.1, "hidden": 16}, "data": {"batch_size": 16}}
    _fit_with_config(tmp_path, config, epochs=1)
    saved = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)["run_config"]
    assert saved["config"] == config and len(saved["config_hash"]) == 64
    changed = {"model": {"lr": 0.2, "hidden": 16}, "data": {"batch_size": 16, "workers": 2}}
    with pytest.raises(tc.CheckpointError, match=r"\['data\.workers', 'model\.lr'\].*allow_config_change"):
        _fit_with_config(tmp_path, changed, epochs=2)
    trainer = _fit_with_config(tmp_path, changed, epochs=2, allow_config_change=True)
    assert trainer.global_step == 8
    assert _fit_with_config(tmp_path, changed, epochs=3).global_step == 12  # now saved with the new config


def test_the_config_is_compared_before_any_weight_is_loaded(tmp_path: Path) -> None:
    _fit_with_config(tmp_path, {"model": {"hidden": 16}}, epochs=1)
    other = Classifier(hidden=32)
    before = weights(other)
    with pytest.raises(tc.CheckpointError, match=r"the keys that differ: \['model\.hidden'\]"):
        _fit_with_config(tmp_path, {"model": {"hidden": 32}}, epochs=2, model=other)
    assert all(torch.equal(before[name], value) for name, value in weights(other).items())
