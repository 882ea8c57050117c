"""`MetricStore`: what `self.log` records, reduced lazily (float64 sums and weights, never means of means).

On the step path a logged value is kept as the tensor it was (detached): no `.item()`, no host sync, no
collective. Epoch values are appended to a short list and folded into float64 `(weighted_sum, weight)` pairs
(`mean`), running totals (`sum`) or running extrema (`max`/`min`). Values are read, and `sync_dist` ones
reduced across ranks, only at fixed points that every rank reaches: epoch ends (`end_epoch`) and logger
writes (`sync_step_values`). The reduction first agrees on the sorted list of `sync_dist` names (one
`all_gather_object`), so a metric logged on one rank only is a `DistributedError` naming it, then does one
`all_reduce` for all sums, one for all maxima and one for all minima.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from trainer_core.collectives import Collectives, SingleProcess
from trainer_core.errors import DistributedError, MisconfigurationError

_REDUCE_FX: dict[Any, str] = {
    "mean": "mean",
    "avg": "mean",
    "sum": "sum",
    "max": "max",
    "min": "min",
    torch.mean: "mean",
    torch.sum: "sum",
    torch.max: "max",
    torch.min: "min",
}
# Pending epoch values are folded into the float64 accumulators this often (bounded memory).
_FOLD_EVERY = 256


@dataclass(frozen=True)
class MetricSpec:
    """How one logged name is treated: where it goes and how it is reduced."""

    name: str
    on_step: bool
    on_epoch: bool
    reduce: str  # "mean" | "sum" | "max" | "min"
    prog_bar: bool
    logger: bool
    sync_dist: bool
    stage: str

    @property
    def forked(self) -> bool:
        """Logged per step and per epoch: Lightning's `name_step` / `name_epoch` pair."""
        return self.on_step and self.on_epoch

    @property
    def step_name(self) -> str:
        return f"{self.name}_step" if self.forked else self.name

    @property
    def epoch_name(self) -> str:
        return f"{self.name}_epoch" if self.forked else self.name


class _EpochAccumulator:
    """One metric's epoch value: pending tensors folded into float64 totals."""

    __slots__ = ("dtype", "pending", "reduce", "total", "weight", "weights")

    def __init__(self, reduce: str) -> None:
        self.reduce = reduce
        self.dtype: torch.dtype | None = None  # the logged values' dtype, given back to the epoch value
        self.pending: list[torch.Tensor] = []
        self.weights: list[float] = []
        self.total: torch.Tensor | None = None
        self.weight = 0.0

    def add(self, value: torch.Tensor, weight: float) -> None:
        if self.dtype is None:
            self.dtype = value.dtype if value.is_floating_point() else torch.get_default_dtype()
        self.pending.append(value)
        self.weights.append(weight)
        if len(self.pending) >= _FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        if not self.pending:
            return
        values = torch.stack(self.pending).to(torch.float64)
        if self.reduce == "mean":
            weights = torch.tensor(self.weights, dtype=torch.float64, device=values.device)
            part = (values * weights).sum()
            self.weight += sum(self.weights)
        elif self.reduce == "sum":
            part = values.sum()
        elif self.reduce == "max":
            part = values.max()
        else:
            part = values.min()
        self.pending, self.weights = [], []
        # Out of place on purpose: an accumulator created under inference mode may be updated outside it.
        if self.total is None:
            self.total = part
        elif self.reduce in ("mean", "sum"):
            self.total = self.total + part
        else:
            self.total = (
                torch.maximum(self.total, part) if self.reduce == "max" else torch.minimum(self.total, part)
            )

    def local_parts(self) -> torch.Tensor:
        """The values to reduce across ranks: `[weighted_sum, weight]` for mean, `[total]` otherwise."""
        self.fold()
        total = self.total if self.total is not None else _EMPTY_TOTAL[self.reduce].clone()
        if self.reduce == "mean":
            return torch.stack([total, torch.tensor(self.weight, dtype=torch.float64, device=total.device)])
        return total.reshape(1)


# What a rank that logged nothing contributes: the identity of each reduction.
_EMPTY_TOTAL = {
    "mean": torch.tensor(0.0, dtype=torch.float64),
    "sum": torch.tensor(0.0, dtype=torch.float64),
    "max": torch.tensor(float("-inf"), dtype=torch.float64),
    "min": torch.tensor(float("inf"), dtype=torch.float64),
}


def _finish(reduce: str, parts: torch.Tensor) -> torch.Tensor:
    """The epoch value from reduced parts (a weighted mean divides only here, once)."""
    if reduce == "mean":
        return parts[0] / parts[1]
    return parts[0]


def infer_batch_size(batch: Any) -> int:
    """The size of the first dimension of the first tensor found in `batch` (1 when there is none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    if isinstance(batch, Mapping):
        items: Any = batch.values()
    elif isinstance(batch, (list, tuple)):
        items = batch
    else:
        return 1
    for item in items:
        if isinstance(item, (torch.Tensor, Mapping, list, tuple)):
            return infer_batch_size(item)
    return 1


class MetricStore:
    """Everything `self.log` recorded, per step and per epoch, and the dicts the trainer exposes."""

    def __init__(self, collectives: Collectives | None = None) -> None:
        self.collectives: Collectives = collectives or SingleProcess()
        self.stage = "train"  # "train" | "validate" | "test" | "predict" | "sanity_check"
        self.in_train_step = False  # inside the training batch hooks: `on_step` defaults to True
        self.dataloader_suffix = ""  # "/dataloader_idx_N" while evaluating several dataloaders
        self.enabled = True
        self._specs: dict[tuple[Any, ...], MetricSpec] = {}
        self._step: dict[str, tuple[MetricSpec, torch.Tensor, int]] = {}
        self._accumulators: dict[str, tuple[MetricSpec, _EpochAccumulator]] = {}
        self._epoch: dict[str, tuple[MetricSpec, torch.Tensor, int]] = {}
        self._seq = 0
        self._batch: Any = None
        self._batch_size: int | None = None
        self._batch_seq = 0
        self._batches_seen: dict[str, int] = {}  # batches of the current epoch, by stage

    # -- the step path -----------------------------------------------------------------------------
    def set_batch(self, batch: Any) -> None:
        """The batch being processed, for batch-size inference (done only when needed)."""
        self._batch = batch
        self._batch_size = None
        self._batch_seq = self._seq
        self._batches_seen[self.stage] = self._batches_seen.get(self.stage, 0) + 1

    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool = True,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        sync_dist: bool = False,
        batch_size: int | None = None,
        add_dataloader_idx: bool = True,
    ) -> None:
        """Record `value` under `name` (see `TrainingModule.log` for the arguments)."""
        if not self.enabled:
            return
        if add_dataloader_idx and self.dataloader_suffix:
            name = name + self.dataloader_suffix
        if on_step is None:
            on_step = self.in_train_step
        if on_epoch is None:
            on_epoch = not self.in_train_step
        key = (name, on_step, on_epoch, reduce_fx, prog_bar, logger, sync_dist, self.stage)
        spec = self._specs.get(key)
        if spec is None:
            spec = self._make_spec(key)
        tensor = self._as_tensor(name, value)
        self._seq += 1
        if on_step:
            self._step[name] = (spec, tensor, self._seq)
        if on_epoch:
            self._accumulate(spec, tensor, batch_size)

    def _make_spec(self, key: tuple[Any, ...]) -> MetricSpec:
        name, on_step, on_epoch, reduce_fx, prog_bar, logger, sync_dist, stage = key
        reduce = _REDUCE_FX.get(reduce_fx)
        if reduce is None:
            raise MisconfigurationError(
                f"self.log({name!r}, reduce_fx={reduce_fx!r}): unknown reduction; use one of "
                '"mean", "sum", "max", "min" (or torch.mean, torch.sum, torch.max, torch.min)'
            )
        spec = MetricSpec(name, on_step, on_epoch, reduce, prog_bar, logger, sync_dist, stage)
        self._specs[key] = spec
        return spec

    @staticmethod
    def _as_tensor(name: str, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise MisconfigurationError(
                    f"self.log({name!r}, ...) got a tensor of shape {tuple(value.shape)}; log a scalar "
                    "(reduce it first, e.g. value.mean())"
                )
            value = value.detach()
            return value.reshape(()) if value.dim() else value
        try:
            return torch.tensor(float(value))
        except (TypeError, ValueError) as err:
            raise MisconfigurationError(
                f"self.log({name!r}, {value!r}): the value must be a number or a one-element tensor; "
                "use self.log_dict for a dict of values"
            ) from err

    def _accumulate(self, spec: MetricSpec, tensor: torch.Tensor, batch_size: int | None) -> None:
        entry = self._accumulators.get(spec.name)
        # An equal spec is one restored from a checkpoint (`load_state_dict`): its sums go on.
        if entry is None or (entry[0] is not spec and entry[0] != spec):
            entry = (spec, _EpochAccumulator(spec.reduce))
            self._accumulators[spec.name] = entry
        weight = 1.0
        if spec.reduce == "mean":
            weight = float(batch_size) if batch_size is not None else float(self._current_batch_size())
        entry[1].add(tensor, weight)

    def _current_batch_size(self) -> int:
        if self._batch_size is None:
            self._batch_size = infer_batch_size(self._batch)
        return self._batch_size

    # -- epochs --------------------------------------------------------------------------------------
    def begin_epoch(self, stage: str) -> None:
        """Start a new epoch of `stage`: its accumulators start empty."""
        self._accumulators = {n: e for n, e in self._accumulators.items() if e[0].stage != stage}
        self._batches_seen[stage] = 0

    def end_epoch(self, stage: str) -> dict[str, tuple[MetricSpec, torch.Tensor]]:
        """Reduce `stage`'s accumulators (across ranks for `sync_dist`) into epoch values; return the new ones
        by their epoch name (`x_epoch` for a metric also logged per step).

        Every rank must call it at the same point. It may be called again in the same epoch end: only what
        was logged since the previous call is reduced.
        """
        done = {n: e for n, e in self._accumulators.items() if e[0].stage == stage}
        self._accumulators = {n: e for n, e in self._accumulators.items() if e[0].stage != stage}
        if self.collectives.world_size > 1:
            self._join_synced_metrics(stage, done)
        local = {name: spec.sync_dist for name, (spec, _) in done.items()}
        parts = {name: acc.local_parts() for name, (_, acc) in done.items()}
        reduced = self._sync(local, {n: done[n][0].reduce for n in done}, parts, agreed=True)
        values: dict[str, tuple[MetricSpec, torch.Tensor]] = {}
        for name, (spec, accumulator) in done.items():
            self._seq += 1
            value = _finish(spec.reduce, reduced[name]).to(accumulator.dtype or torch.float32)
            self._epoch[name] = (spec, value, self._seq)
            values[spec.epoch_name] = (spec, value)
        return values

    def sync_step_values(self) -> None:
        """Reduce the latest `sync_dist` step values across ranks (a logger write; every rank calls it)."""
        if self.collectives.world_size == 1:
            return
        names = {name: spec.sync_dist for name, (spec, _, _) in self._step.items()}
        reduce = {name: spec.reduce for name, (spec, _, _) in self._step.items()}
        parts = {}
        for name, (spec, value, _) in self._step.items():
            as_parts = value.to(torch.float64).reshape(1)
            if spec.reduce == "mean":  # the mean over ranks of each rank's value
                as_parts = torch.cat([as_parts, torch.ones(1, dtype=torch.float64, device=value.device)])
            parts[name] = as_parts
        reduced = self._sync(names, reduce, parts)
        for name, (spec, value, seq) in list(self._step.items()):
            if spec.sync_dist:
                self._step[name] = (spec, _finish(spec.reduce, reduced[name]).to(value.dtype), seq)

    def _join_synced_metrics(self, stage: str, done: dict[str, tuple[MetricSpec, _EpochAccumulator]]) -> None:
        """Make every rank end `stage`'s epoch with the same `sync_dist` names, or raise naming the odd ones.

        A rank whose evaluation shard was empty (more ranks than samples) logged nothing: it takes the
        others' metrics with empty sums, which add nothing to the reduction.
        """
        mine = {name: dataclasses.asdict(spec) for name, (spec, _) in done.items() if spec.sync_dist}
        saw_batches = self._batches_seen.get(stage, 0) > 0 or bool(done)
        everyone = self.collectives.all_gather_object((saw_batches, mine))
        if not saw_batches:
            for _, specs in (entry for entry in everyone if entry[0]):
                for name, fields in specs.items():
                    if name not in done:
                        done[name] = (MetricSpec(**fields), _EpochAccumulator(fields["reduce"]))
        _raise_if_names_differ({rank: sorted(specs) for rank, (seen, specs) in enumerate(everyone) if seen})

    def _sync(
        self,
        sync: dict[str, bool],
        reduce: dict[str, str],
        parts: dict[str, torch.Tensor],
        agreed: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Reduce the `sync_dist` entries of `parts` over ranks: one collective per reduction kind.

        `agreed`: the ranks already know they hold the same names (else one object exchange checks it).
        """
        if self.collectives.world_size == 1:
            return parts
        names = sorted(name for name, on in sync.items() if on)
        if not agreed:
            _raise_if_names_differ(dict(enumerate(self.collectives.all_gather_object(names))))
        result = dict(parts)
        for op, kinds in (("sum", ("mean", "sum")), ("max", ("max",)), ("min", ("min",))):
            group = [name for name in names if reduce[name] in kinds]
            if not group:
                continue
            device = parts[group[0]].device
            flat = torch.cat([parts[name].to(device) for name in group])
            flat = self.collectives.all_reduce(flat, op)  # type: ignore[arg-type]
            offset = 0
            for name in group:
                size = parts[name].numel()
                result[name] = flat[offset : offset + size]
                offset += size
        return result

    # -- reading -------------------------------------------------------------------------------------
    def reset(self, keep_stage: str | None = None) -> None:
        """Forget every value (after the sanity check, and between entry points); `keep_stage`'s running
        epoch sums stay (those of a training epoch resumed in its middle)."""
        self._step.clear()
        self._accumulators = {n: e for n, e in self._accumulators.items() if e[0].stage == keep_stage}
        self._epoch.clear()

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self, stage: str = "train") -> dict[str, Any]:
        """`stage`'s running epoch sums and counts as plain types and tensors (a checkpoint stores them).

        The values not yet folded are stored as they are, not folded: the resumed run then adds them up in
        the same order as a run that never stopped, so its epoch values are equal bit for bit.
        """
        state: dict[str, Any] = {}
        for name, (spec, accumulator) in self._accumulators.items():
            if spec.stage != stage:
                continue
            state[name] = {
                "spec": dataclasses.asdict(spec),
                "dtype": str(accumulator.dtype).removeprefix("torch.") if accumulator.dtype else None,
                "pending": [value.detach().cpu() for value in accumulator.pending],
                "weights": list(accumulator.weights),
                "total": accumulator.total.detach().cpu() if accumulator.total is not None else None,
                "weight": accumulator.weight,
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | None = None) -> None:
        """Put back what `state_dict` returned (on `device`); the next `self.log` of a name continues it."""
        for name, saved in state.items():
            spec = MetricSpec(**saved["spec"])
            accumulator = _EpochAccumulator(spec.reduce)
            accumulator.dtype = getattr(torch, saved["dtype"]) if saved["dtype"] else None
            accumulator.pending = [value.to(device) for value in saved["pending"]]
            accumulator.weights = list(saved["weights"])
            accumulator.total = saved["total"].to(device) if saved["total"] is not None else None
            accumulator.weight = float(saved["weight"])
            self._accumulators[name] = (spec, accumulator)

    def _merged(self, keep: Callable[[MetricSpec], bool]) -> dict[str, tuple[torch.Tensor, int]]:
        merged: dict[str, tuple[torch.Tensor, int]] = {}
        for spec, value, seq in self._step.values():
            if keep(spec):
                merged[spec.step_name] = (value, seq)
        for spec, value, seq in self._epoch.values():
            if keep(spec):
                merged[spec.epoch_name] = (value, seq)
        return merged

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """Every logged value by name; a forked metric also under its plain name."""
        merged = self._merged(lambda spec: True)
        plain: dict[str, tuple[torch.Tensor, int]] = {}
        for spec, value, seq in [*self._step.values(), *self._epoch.values()]:
            if spec.forked and (spec.name not in plain or plain[spec.name][1] < seq):
                plain[spec.name] = (value, seq)
        merged.update(plain)
        return {name: value for name, (value, _) in merged.items()}

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        """The values sent to the loggers (`logger=True`), with `_step`/`_epoch` names for forked metrics."""
        return {name: value for name, (value, _) in self._merged(lambda spec: spec.logger).items()}

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The `prog_bar=True` values as floats (read at the progress bar's refresh, not every step)."""
        merged = self._merged(lambda spec: spec.prog_bar)
        return dict(zip(merged, to_floats([value for value, _ in merged.values()])))

    def step_values_for_loggers(self) -> dict[str, torch.Tensor]:
        """The `logger=True` step values logged since the current batch started."""
        return {
            spec.step_name: value
            for spec, value, seq in self._step.values()
            if spec.logger and seq > self._batch_seq
        }

    def restore(self, values: Mapping[str, torch.Tensor]) -> None:
        """Put back callback metrics saved in a checkpoint (as plain epoch values, not sent to loggers)."""
        for name, value in values.items():
            self._seq += 1
            spec = MetricSpec(name, False, True, "mean", False, False, False, "restored")
            self._epoch[name] = (spec, value, self._seq)


def to_floats(values: list[torch.Tensor]) -> list[float]:
    """Python floats of scalar tensors with one host transfer per device (not one `.item()` each)."""
    if not values:
        return []
    device = values[0].device
    if all(v.device == device for v in values):
        return [float(x) for x in torch.stack([v.to(torch.float64) for v in values]).tolist()]
    return [float(v.item()) for v in values]


def _raise_if_names_differ(names_by_rank: dict[int, list[str]]) -> None:
    """`DistributedError` naming each `sync_dist` metric that some ranks logged and others did not."""
    everyone = list(names_by_rank.values())
    if all(names == everyone[0] for names in everyone):
        return
    union = sorted({name for names in everyone for name in names})
    missing = {
        name: [rank for rank, names in names_by_rank.items() if name not in names]
        for name in union
        if any(name not in names for names in everyone)
    }
    details = "; ".join(f"{name!r} not logged on rank(s) {ranks}" for name, ranks in missing.items())
    raise DistributedError(
        f"metrics logged with sync_dist=True differ between ranks: {details}. Log every sync_dist "
        "metric on every rank at the same point (or drop sync_dist=True for rank-local values)"
    )
