"""All use of `torch.distributed`: process group, collectives, DDP wrapping and failure handling.

Nothing else in the trainer core imports `torch.distributed`; the loop, metrics and callbacks talk to the
other ranks through `Collectives` (`trainer_core.collectives`), which `TorchCollectives` implements here.
Which samples each rank reads (sampler injection, exactly-once evaluation) is `trainer_core.samplers`.

Two process groups exist per job. The default group (NCCL on GPUs, Gloo on CPUs) carries DDP's gradients and
tensor reductions with the strategy's timeout (30 minutes by default, as torch). A second, Gloo group carries
the agreements (barriers, object gathers and broadcasts) with a short timeout: a rank that is gone, or that
skipped a call under a rank condition, turns into a `DistributedError` naming what was waited for, not a hang.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import Store, TCPStore

from trainer_core.collectives import Collectives, Pending, ReduceOp
from trainer_core.ddp import (
    DEFAULT_TIMEOUT,
    DDPStrategy,
    prepare_for_manual_backward,
    resolve_strategy,
    wrap_model,
)
from trainer_core.environment import RankEnvironment, check_master_port
from trainer_core.errors import CheckpointError, DistributedError, MisconfigurationError
from trainer_core.samplers import (
    DistributedSamplerWrapper,
    ExactlyOnceSampler,
    batch_indices,
    collect_predictions,
    eval_loader_with_sampler,
    gather_predictions,
    set_epoch,
    train_loader_with_sampler,
)

# DDP wrapping and the samplers live in their own modules; their names stay importable from here.
__all__ = [
    "DEFAULT_AGREEMENT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DDPStrategy",
    "DistributedSamplerWrapper",
    "ExactlyOnceSampler",
    "TorchCollectives",
    "abort_on_exception",
    "add_rank_prefix_to_logs",
    "barrier_for_prepare_data",
    "batch_indices",
    "collect_predictions",
    "destroy_process_group",
    "eval_loader_with_sampler",
    "gather_predictions",
    "init_process_group",
    "join_job",
    "prepare_for_manual_backward",
    "resolve_strategy",
    "select_backend",
    "set_epoch",
    "train_loader_with_sampler",
    "wrap_model",
]
log = logging.getLogger(__name__)

DEFAULT_AGREEMENT_TIMEOUT = timedelta(minutes=5)
GPU_ACCELERATORS = ("gpu", "cuda")
_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
_FAILURE_KEY = "hpc_launch/first_failure"
T = TypeVar("T")


def select_backend(accelerator: str) -> str:
    """NCCL when the accelerator is a GPU (or "auto" finds one), Gloo otherwise."""
    if accelerator in GPU_ACCELERATORS or (accelerator == "auto" and torch.cuda.is_available()):
        return "nccl"
    return "gloo"


class TorchCollectives:
    """`Collectives` over `torch.distributed`, with bounded agreements on a separate Gloo group."""

    def __init__(
        self,
        env: RankEnvironment,
        device: torch.device,
        store: Store,
        agreement_timeout: timedelta,
        failure_watch_interval: float | None = 1.0,
    ) -> None:
        self.env = env
        self.device = device
        self.store = store
        self.agreement_timeout = agreement_timeout
        self._agreement_group = dist.new_group(backend="gloo", timeout=agreement_timeout)
        self._calls = 0
        self._cpu_group: Any = None  # the Gloo group of `all_reduce_async`, made at its first use
        self.failure_watch = (
            None if failure_watch_interval is None else _FailureWatch(env, failure_watch_interval)
        )

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        """Reduce `tensor` in place over all ranks (on the backend's device) and return it."""
        if op not in _REDUCE_OPS:
            raise MisconfigurationError(f"all_reduce(op={op!r}): use one of {sorted(_REDUCE_OPS)}.")
        if tensor.device == self.device or (self.device.type == "cpu" and tensor.device.type == "cpu"):
            dist.all_reduce(tensor, op=_REDUCE_OPS[op])
            return tensor
        on_device = tensor.to(self.device)
        dist.all_reduce(on_device, op=_REDUCE_OPS[op])
        return tensor.copy_(on_device)

    def all_reduce_async(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> Pending:
        """Start reducing a CPU `tensor` in place (see `Collectives.all_reduce_async`).

        It runs on Gloo (the default group when that is Gloo, else a Gloo group with torch's default timeout):
        a CPU flag never waits for a GPU stream, so reading it costs no host-device sync.
        """
        if self._cpu_group is None:
            gloo = dist.get_backend() == "gloo"
            self._cpu_group = dist.group.WORLD if gloo else dist.new_group(backend="gloo")
        work = dist.all_reduce(tensor, op=_REDUCE_OPS[op], group=self._cpu_group, async_op=True)
        assert work is not None  # async_op=True always returns the work
        return work

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, indexed by rank; a rank that never calls this is a `DistributedError`."""
        gathered: list[Any] = [None] * self.world_size
        self._bounded("all_gather_object", lambda: dist.all_gather_object(gathered, obj, self._group()))
        return gathered

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s `obj` on every rank."""
        box = [obj]
        self._bounded("broadcast_object", lambda: dist.broadcast_object_list(box, src, self._group()))
        return box[0]

    def barrier(self, name: str = "") -> None:
        """Wait for every rank; if one does not arrive in time, raise naming the barrier and the ranks."""
        self._bounded(
            f"barrier {name!r}",
            lambda: dist.monitored_barrier(self._group(), self.agreement_timeout, wait_all_ranks=True),
        )

    def next_key(self, name: str) -> str:
        """A store key unique to this call; every rank makes the same calls, so all get the same key."""
        self._calls += 1
        return f"hpc_launch/{name}/{self._calls}"

    def _group(self) -> Any:
        return self._agreement_group

    def _bounded(self, what: str, call: Callable[[], object]) -> None:
        started = time.monotonic()
        try:
            call()
        except RuntimeError as error:  # Gloo's timeouts and closed connections are RuntimeErrors
            limit, waited = self.agreement_timeout.total_seconds(), time.monotonic() - started
            raise DistributedError(
                f"Rank {self.rank} waited for {what} (limit {limit:g} s) and not every rank took part; "
                f"it gave up after {waited:.1f} s: {error}. "
                "A rank has failed, or one skipped this call (a collective under "
                "`if self.global_rank == 0:`). HINT: make every rank take the same collective calls in the "
                "same order; see the other ranks' logs for a failure."
            ) from error


def init_process_group(
    env: RankEnvironment,
    backend: str | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
    *,
    accelerator: str = "auto",
    agreement_timeout: timedelta = DEFAULT_AGREEMENT_TIMEOUT,
    failure_watch_interval: float | None = 1.0,
) -> TorchCollectives:
    """Join the job's process group and return its collectives.

    `backend=None` picks NCCL for a GPU accelerator and Gloo otherwise; with NCCL this rank uses
    `cuda:{local_rank}`. `timeout` bounds DDP's collectives, `agreement_timeout` the barriers and object
    exchanges. Rank 0 of a Slurm job checks first that the rendezvous port is free (`check_master_port`).
    Every `failure_watch_interval` seconds a background thread looks for a failure that another rank
    recorded (`abort_on_exception`) and ends this rank, even inside an NCCL collective; None turns it off.
    """
    backend = backend or select_backend(accelerator)
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if dist.is_initialized():  # a group exists already (the user's script, an earlier stage): join it
        # A plain client of the rendezvous store, so that its keys are the ones the failure watch reads.
        store = TCPStore(env.master_addr, env.master_port, None, False, timeout, False)
        return TorchCollectives(env, device, store, agreement_timeout, failure_watch_interval)
    check_master_port(env)
    store = TCPStore(
        env.master_addr,
        env.master_port,
        env.world_size,
        # torchrun's agent already serves the store on this port; otherwise rank 0 serves it.
        is_master=env.rank == 0 and not env.agent_store,
        timeout=timeout,
        wait_for_workers=False,
    )
    dist.init_process_group(
        backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout,
        device_id=device if backend == "nccl" else None,
    )  # fmt: skip
    log.info("Rank %d of %d joined the %s process group (%s)", env.rank, env.world_size, backend, env.source)
    return TorchCollectives(env, device, store, agreement_timeout, failure_watch_interval)


def destroy_process_group(
    collectives: Collectives | None = None, within: timedelta = timedelta(seconds=10)
) -> None:
    """Stop the failure watch and leave the process group; a peer that is gone must not hold this rank
    past `within`."""
    if isinstance(collectives, TorchCollectives) and collectives.failure_watch is not None:
        collectives.failure_watch.stop()
    if not dist.is_initialized():
        return
    worker = threading.Thread(target=dist.destroy_process_group, name="destroy-process-group", daemon=True)
    worker.start()
    worker.join(within.total_seconds())
    if worker.is_alive():
        log.warning("Leaving the process group took over %g s; going on without it", within.total_seconds())
    let_gloo_workers_finish()


# How long a rank about to exit leaves the GIL to Gloo's worker threads (see `let_gloo_workers_finish`).
_GLOO_DRAIN_S = 0.2


def let_gloo_workers_finish() -> None:
    """Leave the GIL to Gloo's worker threads for a moment, so they release the last collectives' tensors.

    A Gloo worker thread that drops a finished collective after Python has dropped it frees the tensors
    itself, and freeing a tensor that Python made takes the GIL. The groups (and their threads) live on while
    the trainer, DDP or the collectives still refer to them. If the interpreter is already finalizing when
    such a thread asks for the GIL, Python ends the thread in the middle of torch's C++ code and the process
    aborts ("terminate called without an active exception") after a run that finished. On a busy machine the
    thread may not have run since the last collective; this pause, once at exit, lets it.
    """
    time.sleep(_GLOO_DRAIN_S)


def join_job(env: RankEnvironment, strategy: DDPStrategy | None, accelerator: str) -> TorchCollectives:
    """The trainer's way into the job: the process group with the strategy's backend and timeout.

    A group this call creates is left at interpreter exit; a group the user's script created is the
    script's to destroy (only the failure watch is stopped). Ranks log with a `[rankN]` prefix from here on.
    """
    strategy = strategy or DDPStrategy()
    created = not dist.is_initialized()
    collectives = init_process_group(
        env, strategy.process_group_backend, strategy.timeout, accelerator=accelerator
    )
    if created:
        atexit.register(destroy_process_group, collectives, timedelta(seconds=10))
    else:  # the script destroys its group; the trainer's own threads and Gloo's still need a clean exit
        atexit.register(let_gloo_workers_finish)
        if collectives.failure_watch is not None:
            atexit.register(collectives.failure_watch.stop)
    add_rank_prefix_to_logs(env.rank)
    return collectives


class _RankPrefix(logging.Formatter):
    """`[rankN] LEVEL name: message`: the same prefix `launch` gives the lines of logs/rank{N}.log."""

    def __init__(self, rank: int) -> None:
        super().__init__(f"[rank{rank}] %(levelname)s %(name)s: %(message)s")


def add_rank_prefix_to_logs(rank: int) -> None:
    """Make this rank's trainer logs say which rank wrote them, when nothing has set up logging yet.

    `launch` configures each rank's logging itself (logs/rank{r}.log, every line prefixed); a plain script
    under torchrun or srun usually configures none, and then the ranks' warnings would interleave on one
    console with nothing to tell them apart. A handler already in place (the user's) is left alone.
    """
    package = logging.getLogger("trainer_core")
    if logging.getLogger().handlers or package.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RankPrefix(rank))
    package.addHandler(handler)


_FIRST_POLL_S = 0.005


def barrier_for_prepare_data(
    collectives: Collectives,
    prepare: Callable[[], None],
    *,
    per_node: bool = False,
    poll_interval: float = 0.5,
    on_wait: Callable[[], None] | None = None,
) -> None:
    """Run `prepare` once per job (global rank 0), or once per node (local rank 0), then release the others.

    The waiting ranks poll a key in the rendezvous store instead of sitting in a Gloo barrier, because a
    barrier carries the process group's timeout and a long download must not end the job. They wait without a
    limit: if the preparing rank fails, it writes its error under the key and every waiter raises it; if it
    dies outright, the launcher (torchrun, `srun --kill-on-bad-exit`) ends the job. `on_wait` runs at every
    poll, e.g. to notice a preemption signal.

    The polls start a few milliseconds apart and spread out to `poll_interval` as the wait grows (a twentieth
    of the time waited so far), so a quick preparation (data already on disk) releases the waiters at once,
    while a long download costs the store a request per `poll_interval` and rank.
    """
    if not isinstance(collectives, TorchCollectives):
        prepare()
        return
    env = collectives.env
    key = collectives.next_key(f"prepare_data/node{env.node_rank}" if per_node else "prepare_data/job")
    preparer = env.local_rank == 0 if per_node else env.rank == 0
    if preparer:
        _prepare_and_publish(collectives.store, key, prepare, env.rank)
        return
    started = time.monotonic()
    while not collectives.store.check([key]):
        if on_wait is not None:
            on_wait()
        time.sleep(min(poll_interval, _FIRST_POLL_S + (time.monotonic() - started) / 20))
    outcome = collectives.store.get(key).decode()
    if outcome != "done":
        raise DistributedError(f"prepare_data failed on another rank, so rank {env.rank} stops: {outcome}")


def _prepare_and_publish(store: Store, key: str, prepare: Callable[[], None], rank: int) -> None:
    try:
        prepare()
    except Exception as error:
        store.set(key, f"rank {rank} raised {type(error).__name__}: {error}")
        raise
    store.set(key, "done")


@contextmanager
def abort_on_exception(
    collectives: Collectives, *, hard_exit: bool = True, exit_code: int = 1
) -> Iterator[None]:
    """On an exception in a job of several ranks: log it with the rank, leave the group, exit non-zero.

    The failing rank records itself in the rendezvous store (the first one wins): the other ranks' failure
    watches read it within a second or two and stop too, saying which rank failed first, wherever they are
    (an NCCL collective, a computation, a store wait). Exiting with `os._exit` after the logs are flushed
    is deliberate: a rank whose peers are gone can otherwise hang at interpreter exit (DataLoader workers,
    NCCL teardown), and the launcher tears the job down as soon as one rank exits non-zero. With one rank, or
    `hard_exit=False`, the exception propagates as usual.
    """
    try:
        yield
    except Exception as error:
        if not isinstance(collectives, TorchCollectives):
            raise
        _report_failure(collectives, error)
        _record_for_elastic_agent(error)
        destroy_process_group(collectives)
        if not hard_exit:
            raise
        _exit_now(exit_code)


def _record_for_elastic_agent(error: BaseException) -> None:
    """Under torchrun or `launch`, write the error file their agent reads: its summary shows this traceback.

    The agent's `@record` would write it if the exception left `main`; the hard exit skips that.
    Must be called while `error` is being handled (the file holds the current traceback).
    """
    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    try:
        ErrorHandler().record_exception(error)
    except OSError:  # the report in this rank's log is what matters; the summary is a convenience
        log.debug("Could not write the elastic agent's error file", exc_info=True)


def _exit_now(exit_code: int) -> None:
    """Flush every log and end the process at once, skipping exit handlers that may wait on gone peers."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


class _FailureWatch:
    """Ends this rank soon after another rank records a failure in the rendezvous store.

    Gloo notices a vanished peer by itself, but an NCCL collective waits for its full timeout, and a rank in
    a long computation notices nothing; polling one small key bounds both. An unreachable store is not taken
    as a failure: at a normal end, the rank that hosts the store may simply have exited first.
    """

    def __init__(self, env: RankEnvironment, interval: float) -> None:
        self.interval = interval
        self.reporting = False  # set when this rank records its own failure: it must not end itself early
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(env,), name="failure-watch", daemon=True)
        self._thread.start()

    def stop(self, within_s: float = 5.0) -> None:
        """End the watch and wait (up to `within_s`) for its thread to leave any store call.

        A daemon thread still inside a store call when the interpreter exits is ended by the exit itself,
        which unwinds through torch's C++ code and aborts the process ("terminate called without an active
        exception"): a finished rank would then report a failure.
        """
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(within_s)

    def _watch(self, env: RankEnvironment) -> None:
        try:
            client = TCPStore(env.master_addr, env.master_port, None, False, timedelta(seconds=10), False)
        except Exception:
            log.debug("The failure watch could not reach the rendezvous store", exc_info=True)
            return
        while not self._stop.wait(self.interval):
            try:
                first = client.get(_FAILURE_KEY).decode() if client.check([_FAILURE_KEY]) else None
            except Exception:
                continue
            if first is not None and not self.reporting:
                log.error("Rank %d stops because another rank failed first: %s", env.rank, first)
                _exit_now(1)


def _report_failure(collectives: TorchCollectives, error: BaseException) -> None:
    """Log this rank's traceback, and which rank failed first when that is another one."""
    rank = collectives.rank
    summary = f"rank {rank} ({os.uname().nodename}, pid {os.getpid()}): {type(error).__name__}: {error}"
    first = summary
    watch = collectives.failure_watch
    if watch is not None:
        watch.reporting = True
    try:
        collectives.store.set_timeout(timedelta(seconds=5))  # the store's host may be the rank that is gone
        first = collectives.store.compare_set(_FAILURE_KEY, "", summary).decode()
    except Exception:  # the store is unreachable; this rank's own report is all there is
        log.debug("Could not record the failure in the rendezvous store", exc_info=True)
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if isinstance(error, CheckpointError):  # says what is wrong and the fix: a traceback adds nothing
        trace = f"{type(error).__name__}: {error}"
    if first != summary:
        log.error("Rank %d stops because another rank failed first: %s", rank, first)
    log.error("Rank %d failed; stopping every rank of the job.\n%s", rank, trace)
    hosts_store = collectives.rank == 0 and not collectives.env.agent_store
    if first == summary and hosts_store and watch is not None:
        time.sleep(2 * watch.interval)  # the store leaves with this rank: let the others' watches read it
