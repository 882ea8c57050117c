"""Atomic checkpoint writes, verification, weights_only loading and plain-type hyperparameters."""

from __future__ import annotations

import dataclasses
import enum
import errno
import hashlib
import json
import os
import random
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import torch

from trainer_core import checkpoint
from trainer_core.checkpoint import (
    load,
    manifest_path,
    remove,
    save_atomic,
    to_plain,
    verify,
    wait_for_pending,
)
from trainer_core.errors import CheckpointError
from trainer_core.seed import capture_rng_state, restore_rng_state, seed_everything


@pytest.fixture(autouse=True)
def _nothing_left_pending() -> Iterator[None]:
    yield
    wait_for_pending()  # a commit error a test left unraised fails that test, not the next one


def _training_state() -> dict[str, Any]:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    return {
        "state_dict": model.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "epoch": 3,
        "global_step": 120,
        "rng_states": capture_rng_state(),
        "hyper_parameters": to_plain({"lr": 1e-3, "path": Path("/data"), "layers": (16, 2)}),
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def test_round_trip_of_a_training_state(tmp_path: Path) -> None:
    state = _training_state()
    path = tmp_path / "last.ckpt"
    save_atomic(state, path)
    assert _same(load(path), state)
    assert _same(torch.load(path, weights_only=True), state)


def test_creates_missing_directories_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoints" / "epoch=1.ckpt"
    save_atomic({"a": torch.ones(3)}, path)
    wait_for_pending()
    assert sorted(p.name for p in path.parent.iterdir()) == ["epoch=1.ckpt", "epoch=1.ckpt.json"]


def test_manifest_records_size_and_verify_accepts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    save_atomic(_training_state(), path, sync=True)
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest["size"] == path.stat().st_size
    assert verify(path)
    assert verify(path)


def test_verify_rejects_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    save_atomic(_training_state(), path, sync=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not verify(path)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_large_records_are_checked_by_the_crc32_torch_wrote_and_every_other_byte_by_sha256(
    tmp_path: Path,
) -> None:
    path = tmp_path / "last.ckpt"
    weights = torch.randn(100_000)  # 400 kB: one record checked by its CRC-32
    save_atomic({"weights": weights, "step": 7}, path, sync=True)
    manifest = json.loads(manifest_path(path).read_text())
    [[offset, length, crc]] = manifest["record_crc32"]
    data = path.read_bytes()
    assert length == weights.nbytes and data[offset : offset + length] == weights.numpy().tobytes()
    assert crc == zlib.crc32(data[offset : offset + length])
    outside = data[:offset] + data[offset + length :]
    assert manifest["sha256"] == hashlib.sha256(outside).hexdigest()
    assert checkpoint.check(path) is None
    central_directory = data.rindex(b"PK\x01\x02")
    for where in (offset + length // 2, central_directory + 16, 3):  # tensor data, a stored CRC-32, a header
        _flip(path, where)
        assert checkpoint.check(path) == "content digest mismatch"
        _flip(path, where)
        assert checkpoint.check(path) is None


def test_when_torch_computes_no_crc32_every_byte_is_hashed(tmp_path: Path) -> None:
    config = pytest.importorskip("torch.utils.serialization").config
    path = tmp_path / "last.ckpt"
    with config.patch({"save.compute_crc32": False}):
        save_atomic({"weights": torch.randn(100_000)}, path, sync=True)
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest["record_crc32"] == []
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    _flip(path, path.stat().st_size // 2)
    assert checkpoint.check(path) == "content digest mismatch"


def test_verify_rejects_a_file_replaced_behind_the_manifest(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    save_atomic({"weights": torch.zeros(100)}, path, sync=True)
    torch.save({"weights": torch.ones(100)}, path)  # same size, other content
    assert not verify(path)


def test_verify_finds_a_flipped_byte_in_the_tensor_data(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    save_atomic({"weights": torch.zeros(1000)}, path, sync=True)
    data = bytearray(path.read_bytes())
    offset = data.index(bytes(400))  # somewhere inside the zeros of the tensor's storage
    data[offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert checkpoint.check(path) == "content digest mismatch"
    assert not verify(path)


def test_verify_without_manifest_checks_the_zip_structure(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.ckpt", tmp_path / "bad.ckpt"
    torch.save({"a": 1}, good)
    bad.write_bytes(os.urandom(4096))
    assert verify(good)
    assert not verify(bad)
    assert not verify(tmp_path / "missing.ckpt")


def test_truncated_file_raises_checkpoint_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    save_atomic(_training_state(), path, sync=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*truncated or corrupt"):
        load(path)


def test_random_bytes_raise_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.ckpt"
    path.write_bytes(random.Random(0).randbytes(10_000))
    with pytest.raises(CheckpointError, match=r"noise\.ckpt"):
        load(path)


def test_missing_file_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nothere\.ckpt.*does not exist"):
        load(tmp_path / "nothere.ckpt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load(tmp_path)


def test_a_non_dict_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.ckpt"
    torch.save(torch.ones(2), path)
    with pytest.raises(CheckpointError, match=r"tensor\.ckpt.*holds a Tensor"):
        load(path)


class _Custom:
    pass


def test_objects_weights_only_refuses_get_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "pickled.ckpt"
    torch.save({"thing": _Custom()}, path)
    with pytest.raises(CheckpointError, match=r"pickled\.ckpt.*weights_only"):
        load(path)


def test_failing_write_keeps_the_previous_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    save_atomic({"generation": 1}, path, sync=True)
    before = path.read_bytes()

    def half_then_fail(state: Any, file: IO[bytes]) -> None:
        file.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.io, "_serialize", half_then_fail)
    save_atomic({"generation": 2}, path)  # the writer thread serialises, and fails
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*No space left.*Free space.*dirpath"):
        wait_for_pending()
    assert path.read_bytes() == before
    assert load(path) == {"generation": 1}
    assert verify(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.json"]


def test_size_mismatch_after_write_is_a_checkpoint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    real_fsync = os.fsync

    def lose_bytes_then_fsync(fd: int) -> None:
        os.ftruncate(fd, 10)  # what a failing file system might do behind the writer's back
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", lose_bytes_then_fsync)
    save_atomic({"a": torch.ones(10)}, path)  # the size is checked by the committer, after the fsync
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*bytes but the file holds 10"):
        wait_for_pending()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CheckpointError, match="bytes but the file holds 10"):
        save_atomic({"a": torch.ones(10)}, path, sync=True)
    assert list(tmp_path.iterdir()) == []


def test_a_large_checkpoint_holds_the_state_of_its_save_point_while_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release, real_fsync = threading.Event(), threading.Event(), os.fsync

    def held_fsync(fd: int) -> None:
        entered.set()
        release.wait(timeout=30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)
    path = tmp_path / "big.ckpt"
    weights = torch.randn(1 << 20)
    expected = weights.clone()
    save_atomic({"weights": weights, "step": [1]}, path)  # returns with the snapshot taken
    weights.mul_(0.0)  # training moves on while the writer holds the file in its fsync
    assert entered.wait(timeout=30)
    release.set()
    wait_for_pending()
    assert verify(path)
    assert torch.equal(load(path)["weights"], expected)
    assert _names_of(tmp_path) == ["big.ckpt", "big.ckpt.json"]


def _names_of(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_remove_deletes_checkpoint_and_manifest(tmp_path: Path) -> None:
    path = tmp_path / "epoch=0.ckpt"
    save_atomic({"a": 1}, path)
    remove(path)
    remove(path)  # twice is fine
    assert list(tmp_path.iterdir()) == []


def test_rng_state_in_a_checkpoint_restores_the_same_draws(tmp_path: Path) -> None:
    seed_everything(5)
    path = tmp_path / "rng.ckpt"
    save_atomic({"rng_states": capture_rng_state()}, path)
    expected = (random.random(), torch.rand(2).tolist(), np.random.rand(2).tolist())
    restore_rng_state(load(path)["rng_states"])
    assert (random.random(), torch.rand(2).tolist(), np.random.rand(2).tolist()) == expected


class _Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Config:
    width: int = 4
    where: Path = Path("/tmp")


def test_to_plain_converts_hyperparameters(tmp_path: Path) -> None:
    hparams = OrderedDict(
        lr=0.1,
        sizes=(1, 2),
        tags={"b", "a"},
        color=_Color.RED,
        config=_Config(),
        array=np.arange(3),
        scalar=np.float32(0.5),
        fn=len,
        nested={1: [None, True]},
    )
    plain = to_plain(hparams)
    assert plain == {
        "lr": 0.1,
        "sizes": [1, 2],
        "tags": ["a", "b"],
        "color": "red",
        "config": {"width": 4, "where": "/tmp"},
        "array": [0, 1, 2],
        "scalar": 0.5,
        "fn": repr(len),
        "nested": {1: [None, True]},
    }
    assert type(plain) is dict
    path = tmp_path / "h.ckpt"
    save_atomic({"hyper_parameters": plain}, path)
    assert load(path)["hyper_parameters"] == plain
