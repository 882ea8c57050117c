"""A consistent copy of the training state at a save point, in host buffers that are reused from save to save.

The training thread takes the snapshot and goes on at once; the writer thread serialises the copy while
training moves the live tensors on. What a snapshot costs the training thread is one memory copy of every
tensor, no pickling and no system call:

- CPU tensors are copied into host buffers kept from the previous save (`copy_` into memory already mapped:
  a fresh allocation of a large state would fault in every page again, which costs more than the copy).
- CUDA tensors are copied into pinned host buffers with `non_blocking=True` on the training stream, and an
  event is recorded after the last copy; the writer waits on that event before it reads them, so the training
  thread never waits for the device. The copies go on the training stream, not a side stream: the next
  forward pass changes state in place (BatchNorm's running statistics), so a side-stream copy would need the
  training stream to wait for it before that forward anyway, and would overlap nothing.

Containers (dict, list, tuple) are rebuilt, so later changes to the live dicts do not reach the snapshot;
immutable values are shared; any other object is deep-copied. A tensor reached twice (tied weights) is copied
once and stays shared in the snapshot, as `torch.save` would keep it.

Host memory: one set of buffers, the size of the checkpoint's tensors, lives from the first save on; a save
point waits while the previous snapshot is still being written (one snapshot in flight), so the set is never
needed twice.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any

import torch

_IMMUTABLE = (
    str,
    bytes,
    int,
    float,
    complex,
    bool,
    type(None),
    torch.dtype,
    torch.device,
    torch.Size,
    enum.Enum,
)


@dataclasses.dataclass
class Snapshot:
    """The copied state, the bytes its tensors hold, and how to wait until device copies have landed."""

    state: dict[str, Any]
    tensor_bytes: int
    ready: Callable[[], None]  # blocks until every copy is complete (device-to-host copies are asynchronous)


class BufferPool:
    """Host buffers for snapshot tensors, matched by position in the state and kept between saves."""

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []

    def take(self, state: Mapping[str, Any]) -> Snapshot:
        """Copy `state` into the pool's buffers (the previous snapshot must no longer be in use)."""
        walk = _Walk(self._buffers)
        # Buffers made inside `inference_mode` (a save point in validation) would be inference tensors,
        # which the next save could not copy into: the copies are made as ordinary tensors.
        with torch.inference_mode(False), torch.no_grad():
            copied = walk.copy(state)
        del self._buffers[walk.used :]  # a smaller state than last time: let the rest go
        event = walk.event()
        return Snapshot(copied, walk.nbytes, event.synchronize if event is not None else _nothing)

    @property
    def nbytes(self) -> int:
        """Host memory the pool holds now."""
        return sum(buffer.untyped_storage().nbytes() for buffer in self._buffers)


def in_place(state: Mapping[str, Any]) -> Snapshot:
    """The state itself as a snapshot, for a save its caller waits for (nothing changes it meanwhile)."""
    return Snapshot(dict(state), _tensor_bytes(state), _nothing)


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def _nothing() -> None:
    return None


class _Walk:
    """One pass over a state: rebuilds containers, copies tensors into the pool's buffers in order."""

    def __init__(self, buffers: list[torch.Tensor]) -> None:
        self.buffers = buffers
        self.used = 0
        self.nbytes = 0
        self.devices: set[torch.device] = set()
        self.seen: dict[tuple[Any, ...], torch.Tensor] = {}

    def copy(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._tensor(value)
        if isinstance(value, _IMMUTABLE):
            return value
        if isinstance(value, dict):  # OrderedDict stays an OrderedDict (state_dict metadata included)
            rebuilt = copy.copy(value)
            for key, item in value.items():
                rebuilt[key] = self.copy(item)
            return rebuilt
        if isinstance(value, list):
            return [self.copy(item) for item in value]
        if isinstance(value, tuple) and type(value) is tuple:
            return tuple(self.copy(item) for item in value)
        return copy.deepcopy(value)

    def _tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        source = tensor.detach()
        if type(source) is not torch.Tensor or source.is_sparse or source.device.type == "meta":
            return source.clone()  # subclasses and sparse tensors: a plain clone (rare in checkpoints)
        # `state_dict()` returns a new tensor object per name: tied weights are told by their memory.
        key = (source.data_ptr(), source.device, source.dtype, source.shape, source.stride())
        known = self.seen.get(key)
        if known is not None:
            return known
        copied = self._buffer_for(source)
        copied.copy_(source, non_blocking=source.device.type == "cuda")
        if source.device.type == "cuda":
            self.devices.add(source.device)
        self.nbytes += copied.numel() * copied.element_size()
        self.seen[key] = copied
        return copied

    def _buffer_for(self, source: torch.Tensor) -> torch.Tensor:
        pin = source.device.type == "cuda"
        index, self.used = self.used, self.used + 1
        if index < len(self.buffers):
            buffer = self.buffers[index]
            if buffer.shape == source.shape and buffer.dtype == source.dtype and buffer.is_pinned() == pin:
                return buffer
        buffer = torch.empty(source.shape, dtype=source.dtype, device="cpu", pin_memory=pin)
        if index < len(self.buffers):
            self.buffers[index] = buffer
        else:
            self.buffers.append(buffer)
        return buffer

    def event(self) -> Any:
        """An event after the copies on every CUDA device touched (one device per rank in practice)."""
        events = []
        for device in self.devices:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events.append(event)
        if not events:
            return None
        return _Events(events)


class _Events:
    def __init__(self, events: list[Any]) -> None:
        self._events = events

    def synchronize(self) -> None:
        for event in self._events:
            event.synchronize()
