"""A consistent copy of the training state at a save point, in host buffers that are reused from save to save.

The training thread takes the snapshot and goes on at once; the writer thread serialises the copy while
training moves the live tensors on. What a snapshot costs the training thread is one memory copy of every
tensor, no pickling and no system call:

- CPU tensors are copied into host buffers kept from the previous save (into memory already mapped: a fresh
  allocation of a large state would fault in every page again, which costs more than the copy). All copies
  of a device type go in one `_foreach_copy_`.
- CUDA tensors are copied into pinned host buffers with `non_blocking=True` on the training stream, and an
  event is recorded after the last copy; the writer waits on that event before it reads them, so the training
  thread never waits for the device. The copies go on the training stream, not a side stream: the next
  forward pass changes state in place (BatchNorm's running statistics), so a side-stream copy would need the
  training stream to wait for it before that forward anyway, and would overlap nothing.

Containers (dict, list, tuple) are rebuilt, so later changes to the live dicts do not reach the snapshot;
immutable values are shared; any other object is deep-copied. A tensor reached twice (tied weights) is copied
once and stays shared in the snapshot, as `torch.save` would keep it.

Values slow to turn into checkpoint types (the RNG states) are taken as they are and wrapped in `Later`:
the writer converts them. Host memory: one set of buffers, the size of the checkpoint's tensors, allocated on
a helper thread after the first training step (`BufferPool.reserve`: pinning a few GB takes about a second)
and kept; a save point waits while the previous snapshot is still being serialised (one snapshot in flight),
so the set is never needed twice.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)

# Shared, not copied: values nothing can change; `_SHARED` holds exact types, checked first (the fast path).
_SHARED: frozenset[type] = frozenset(
    {str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size}
)
_IMMUTABLE: tuple[type, ...] = (*_SHARED, enum.Enum)


@dataclasses.dataclass
class Snapshot:
    """The copied state, the bytes its tensors hold, and how to wait until device copies have landed."""

    state: dict[str, Any]
    tensor_bytes: int
    ready: Callable[[], None]  # blocks until every copy is complete (device-to-host copies are asynchronous)


_Key = tuple[torch.Size, torch.dtype, bool]  # shape, dtype, pinned


class BufferPool:
    """Host buffers for snapshot tensors, matched by shape and dtype and kept from one save to the next.

    `reserve` allocates them ahead of the first save point (on a helper thread: pinning a few GB of host
    memory takes about a second, which the training thread should not pay); `take` waits for a reservation
    still in progress. Buffers the last snapshot did not use are let go.
    """

    def __init__(self) -> None:
        self._spare: dict[_Key, list[torch.Tensor]] = {}
        self._ready = threading.Event()
        self._ready.set()

    def reserve(self, tensors: list[torch.Tensor]) -> None:
        """Make buffers for tensors like these, in a helper thread; the next `take` waits for them."""
        specs = [_key(tensor) for tensor in tensors if _copyable(tensor)]
        self._ready.clear()
        threading.Thread(target=self._allocate, args=(specs,), name="checkpoint-buffers", daemon=True).start()

    def _allocate(self, specs: list[_Key]) -> None:
        try:
            for shape, dtype, pinned in specs:
                buffer = torch.empty(shape, dtype=dtype, pin_memory=pinned)
                if not pinned:
                    buffer.zero_()  # fault the pages in now, not in the first snapshot's copy
                self._spare.setdefault((shape, dtype, pinned), []).append(buffer)
        except Exception:  # out of pinned memory, say: the first snapshot allocates what it needs itself
            log.debug("Could not reserve snapshot buffers ahead of time", exc_info=True)
        finally:
            self._ready.set()

    def take(self, state: Mapping[str, Any]) -> Snapshot:
        """Copy `state` into the pool's buffers (the previous snapshot must no longer be in use)."""
        self._ready.wait()
        walk = _Walk(self._spare)
        # Buffers made inside `inference_mode` (a save point in validation) would be inference tensors,
        # which the next save could not copy into: they are made, and copied into, as ordinary tensors.
        with _plain_tensors():
            copied = walk.copy(state)
            walk.copy_tensors()
        self._spare = {}
        for key, buffer in walk.used:
            self._spare.setdefault(key, []).append(buffer)
        event = walk.event()
        return Snapshot(copied, walk.nbytes, event.synchronize if event is not None else _nothing)

    @property
    def nbytes(self) -> int:
        """Host memory the pool holds (once a reservation in progress is done)."""
        self._ready.wait()
        return sum(b.untyped_storage().nbytes() for buffers in self._spare.values() for b in buffers)


def _plain_tensors() -> contextlib.AbstractContextManager[Any]:
    """Outside `inference_mode` and without autograd (entered only where needed: each costs microseconds)."""
    stack = contextlib.ExitStack()
    if torch.is_inference_mode_enabled():
        stack.enter_context(torch.inference_mode(False))
    if torch.is_grad_enabled():
        stack.enter_context(torch.no_grad())
    return stack


def _key(tensor: torch.Tensor, pinned: bool | None = None) -> _Key:
    return tensor.shape, tensor.dtype, tensor.device.type == "cuda" if pinned is None else pinned


def _copyable(tensor: torch.Tensor) -> bool:
    """Whether a snapshot copies `tensor` into a pool buffer (plain dense tensors; others are cloned)."""
    return type(tensor) is torch.Tensor and tensor.layout is torch.strided and not tensor.is_meta


class Later:
    """A checkpoint value converted on the writer thread: `convert(captured)`, where `captured` was taken at
    the save point and nothing changes it afterwards (fresh copies, immutable values)."""

    def __init__(self, convert: Callable[[Any], Any], captured: Any) -> None:
        self.convert = convert
        self.captured = captured


def resolved(value: Any) -> Any:
    """`value` with every `Later` in it converted (containers rebuilt only where one was found)."""
    if isinstance(value, Later):
        return value.convert(value.captured)
    if type(value) is dict or isinstance(value, OrderedDict):
        if not any(isinstance(item, (Later, dict, list)) for item in value.values()):
            return value
        rebuilt = type(value)((key, resolved(item)) for key, item in value.items())
        _keep_metadata(value, rebuilt)
        return rebuilt
    if type(value) is list:
        return [resolved(item) for item in value]
    return value


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
    """One pass over a state: rebuilds containers, copies tensors into spare buffers of the right shape."""

    def __init__(self, spare: dict[_Key, list[torch.Tensor]]) -> None:
        self.spare = spare
        self.used: list[tuple[_Key, torch.Tensor]] = []
        # (buffers, sources) per device type, copied together once the walk is done
        self.cpu_copies: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self.cuda_copies: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self.nbytes = 0
        self.devices: set[torch.device] = set()
        self.seen: dict[tuple[Any, ...], torch.Tensor] = {}

    def copy(self, value: Any) -> Any:
        kind = type(value)  # exact types first: this runs for every value of the state
        if kind in _SHARED:
            return value
        if kind is torch.Tensor:
            return self._tensor(value)
        if kind is dict:
            return {key: self.copy(item) for key, item in value.items()}
        if kind is Later:  # converted on the writer thread from what it captured
            return value
        if isinstance(value, torch.Tensor):
            return self._tensor(value)
        if isinstance(value, _IMMUTABLE):
            return value
        if kind is list:
            return [self.copy(item) for item in value]
        if kind is tuple:
            return tuple(self.copy(item) for item in value)
        if isinstance(value, OrderedDict):  # a state_dict: its `_metadata` (module versions) goes along
            rebuilt = kind((key, self.copy(item)) for key, item in value.items())
            _keep_metadata(value, rebuilt)
            return rebuilt
        return copy.deepcopy(value)

    def _tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        # This runs for every tensor of the state on the training thread: kept to a few attribute reads.
        if type(tensor) is not torch.Tensor or not _copyable(tensor):
            return tensor.detach().clone()  # subclasses and sparse tensors: a plain clone (rare here)
        shape = tensor.shape
        # `state_dict()` returns a new tensor object per name: tied weights are told by their memory.
        seen_as = (tensor.data_ptr(), shape, tensor.stride())
        known = self.seen.get(seen_as)
        if known is not None:
            return known
        on_cuda = tensor.is_cuda
        key = (shape, tensor.dtype, on_cuda)
        matching = self.spare.get(key)
        copied = matching.pop() if matching else torch.empty(shape, dtype=key[1], pin_memory=on_cuda)
        self.used.append((key, copied))
        if on_cuda:
            self.cuda_copies[0].append(copied)
            self.cuda_copies[1].append(tensor)
            self.devices.add(tensor.device)
        else:
            self.cpu_copies[0].append(copied)
            self.cpu_copies[1].append(tensor)
        self.nbytes += tensor.nbytes
        self.seen[seen_as] = copied
        return copied

    def copy_tensors(self) -> None:
        """Every copy, in one call per device type (one dispatch instead of one per tensor)."""
        if self.cpu_copies[0]:
            torch._foreach_copy_(*self.cpu_copies)
        if self.cuda_copies[0]:
            torch._foreach_copy_(*self.cuda_copies, non_blocking=True)

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


def _keep_metadata(source: Any, copy_: Any) -> None:
    metadata = getattr(source, "_metadata", None)
    if metadata is not None:
        copy_._metadata = metadata


class _Events:
    def __init__(self, events: list[Any]) -> None:
        self._events = events

    def synchronize(self) -> None:
        for event in self._events:
            event.synchronize()
