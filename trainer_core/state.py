"""`LoopProgress`, the loop counters a checkpoint stores and resume restores, and the trainer's stage."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The stages a user's hooks see as `stage` (setup/teardown) and `trainer.state.stage`.
STAGES = ("fit", "validate", "test", "predict")


@dataclass
class TrainerState:
    """What the trainer is doing: `stage` is the entry point that runs ("fit", "validate", ...), else None."""

    stage: str | None = None
    status: str = "initializing"  # "initializing" | "running" | "finished" | "interrupted" | "preempted"


@dataclass
class LoopProgress:
    """Where the fit loop stands; a checkpoint stores it and resume continues from it.

    The fields are the loop's own counters (not copies): the loop increments them, `state_dict` reads them.
    An epoch passes through three points: its batches run (`epoch_batches` counts the completed ones), then
    `epoch_batches_done`, then its end (hooks, epoch-interval schedulers) and `epoch` advances. A checkpoint
    written from an epoch-end hook therefore says "batches done, end not done": resume only finishes that
    end (steps the epoch schedulers) and starts the next epoch. A checkpoint written mid-epoch records
    `epoch_batches`, the batch index to continue from; `extra` holds later loop state (a sampler's position,
    for instance) is added without changing these fields.

    `validation_pending` says that a stop signal interrupted the validation that runs after batch
    `epoch_batches - 1`: resume runs that validation again from its start, with the RNG states captured when
    it first started (`rng_at_validation_start`, which the checkpoint stores as its `rng_states`).
    """

    epoch: int = 0  # the epoch running, or the next one to run
    global_step: int = 0  # optimizer steps taken (per optimizer in manual optimization, as Lightning)
    epoch_batches: int = 0  # training batches completed in `epoch`
    total_batches: int = 0  # training batches completed in every epoch together
    stepped_batches: int = 0  # batches after which an optimizer stepped (the loggers' step counter)
    accumulated_batches: int = 0  # batches whose gradients wait for the next optimizer step
    epoch_batches_done: bool = False  # `epoch`'s batch loop has finished
    shuffle_seed: int | None = None  # the per-epoch shuffle order's seed (order = f(seed + epoch))
    validation_pending: bool = False  # a validation was interrupted; resume runs it again before training
    extra: dict[str, Any] = field(default_factory=dict)
    # Not stored as a loop counter: the RNG states when the running validation started.
    rng_at_validation_start: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def start_epoch(self) -> None:
        """Reset the within-epoch counters at the start of `epoch`."""
        self.epoch_batches = 0
        self.accumulated_batches = 0
        self.epoch_batches_done = False

    def finish_epoch(self) -> None:
        """Mark `epoch` fully done (end hooks and epoch schedulers included) and move to the next one."""
        self.epoch += 1
        self.start_epoch()

    @property
    def resumes_mid_epoch(self) -> bool:
        """True when the stored position is inside an epoch's batch loop."""
        return self.epoch_batches > 0 and not self.epoch_batches_done

    def state_dict(self) -> dict[str, Any]:
        """Plain types only, so `torch.load(weights_only=True)` reads it."""
        # What `dataclasses.asdict` returns, at a fifth of its cost (it runs at every checkpoint): the
        # counters are immutable, and only `extra` needs a deep copy.
        state = {name: getattr(self, name) for name in _STORED_FIELDS}
        state["extra"] = copy.deepcopy(self.extra) if self.extra else {}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` returned; unknown keys (from a newer version) are kept in `extra`."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in state.items():
            if key in names:
                setattr(self, key, value)
            else:
                self.extra[key] = value


# The fields a checkpoint stores, in declaration order (`extra` last): every field but the RNG states.
_STORED_FIELDS = tuple(
    f.name for f in dataclasses.fields(LoopProgress) if f.name not in ("extra", "rng_at_validation_start")
)
