"""launcher.startup: imports with the cyclic collector paused, then all frozen and collection back on."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from launcher.startup import collector_paused


@pytest.fixture(autouse=True)
def _restore_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_the_collector_is_paused_inside_and_collects_again_after() -> None:
    gc.enable()
    gc.unfreeze()
    with collector_paused():
        inside = gc.isenabled()
        kept = [_Node() for _ in range(100)]
    assert inside is False
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)  # what existed at the end of the block is frozen
    # What the block made is never collected; a cycle made afterwards is.
    frozen, fresh = weakref.ref(kept[0]), weakref.ref(_Node())
    del kept
    gc.collect()
    assert frozen() is not None
    assert fresh() is None


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_the_collector_comes_back_when_the_block_raises() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("import failed")
    assert gc.isenabled()
