"""`DeviceStatsMonitor`: GPU (pynvml) and CPU/RAM (psutil) statistics, sampled on a background thread.

Sampling runs off the training thread, so a slow NVML or /proc read never delays a step; the training thread
only gathers the latest sample of every rank (one `all_gather_object`, at the steps where the trainer writes
its loggers) and logs min/max across ranks with the rank of each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

import torch

from trainer_core.callbacks import rank_stats
from trainer_core.callbacks.base import Callback
from trainer_core.errors import MisconfigurationError

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)

_MB = 1024 * 1024
PREFIX = "device_stats/"


class _GpuProbe:
    """Reads one GPU through NVML; `open` returns None (after one info line) where NVML cannot be used."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle

    @classmethod
    def open(cls, device: torch.device) -> _GpuProbe | None:
        if device.type != "cuda":
            log.info("DeviceStatsMonitor: GPU statistics are off, the module runs on %s.", device)
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            return cls(pynvml, _nvml_handle(pynvml, device))
        except Exception as error:  # NVML missing, no driver, or a device it cannot see
            log.info("DeviceStatsMonitor: GPU statistics are off, NVML is not usable here (%s).", error)
            return None

    def sample(self) -> dict[str, float]:
        nvml, handle = self._nvml, self._handle
        stats: dict[str, float] = {}
        readers = {
            "gpu_utilization_percent": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            "gpu_memory_used_mb": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used / _MB,
            "gpu_memory_total_mb": lambda: nvml.nvmlDeviceGetMemoryInfo(handle).total / _MB,
            "gpu_power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "gpu_temperature_c": lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
            "gpu_sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
            "gpu_memory_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
        }
        for name, read in readers.items():
            try:
                stats[name] = float(read())
            except Exception:  # a counter this GPU does not support (power on some boards): leave it out
                continue
        return stats

    def close(self) -> None:
        with contextlib.suppress(Exception):  # shutting down is best effort
            self._nvml.nvmlShutdown()


def _nvml_handle(nvml: Any, device: torch.device) -> Any:
    """NVML numbers all GPUs; CUDA only the visible ones. The UUID names the same GPU in both."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        ids = [item for item in visible.split(",") if item.strip().isdigit()]
        return nvml.nvmlDeviceGetHandleByIndex(int(ids[index]) if index < len(ids) else index)


class _CpuProbe:
    """Process and system CPU and memory through psutil."""

    def __init__(self) -> None:
        import psutil  # here, not at the top: its import takes ~70 ms that runs without this callback skip

        self._psutil = psutil
        self._process = psutil.Process()
        # psutil's CPU percentages are "since the previous call": prime them so the first sample is real.
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)

    def sample(self) -> dict[str, float]:
        psutil = self._psutil
        memory = psutil.virtual_memory()
        return {
            "cpu_process_percent": float(self._process.cpu_percent(None)),
            "cpu_system_percent": float(psutil.cpu_percent(None)),
            "cpu_process_rss_mb": self._process.memory_info().rss / _MB,
            "ram_system_used_percent": float(memory.percent),
            "ram_system_available_mb": memory.available / _MB,
        }


class DeviceStatsMonitor(Callback):
    """Sample device statistics every `interval_s` seconds on a background thread; log them at the steps where
    the trainer writes its loggers (every `log_every_n_steps`) under `device_stats/<name>`.

    GPU statistics (utilisation, memory used/total, power, temperature, clocks) come from NVML for the
    module's CUDA device and turn themselves off, with one info line, where NVML is missing.
    `cpu_stats` adds process and system CPU, the process's resident memory and system RAM.

    With several ranks every statistic is logged as `device_stats/<name>/min` and `/max` across the ranks,
    with `/min_rank` and `/max_rank` saying which rank holds each. With `prog_bar`, the progress bar shows
    GPU utilisation (or process CPU) as a min-max range across ranks and the largest memory in use.
    """

    def __init__(self, interval_s: float = 1.0, cpu_stats: bool = True, prog_bar: bool = True) -> None:
        if interval_s <= 0:
            raise MisconfigurationError(
                f"DeviceStatsMonitor(interval_s={interval_s}) is not valid: use a number of seconds > 0."
            )
        self.interval_s = interval_s
        self.cpu_stats = cpu_stats
        self.prog_bar = prog_bar
        self._latest: dict[str, float] = {}
        self._extremes: dict[str, rank_stats.Extremes] = {}
        self._cadence = rank_stats.LogCadence()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probes: list[_GpuProbe | _CpuProbe] = []

    @property
    def latest(self) -> dict[str, float]:
        """This rank's most recent sample (empty until the first one is taken)."""
        return dict(self._latest)

    @property
    def extremes(self) -> dict[str, rank_stats.Extremes]:
        """Min and max of each statistic across the ranks, as of the last logged step."""
        return dict(self._extremes)

    def progress_bar_metrics(self, trainer: Trainer) -> dict[str, str]:
        """What the progress bar shows: utilisation as a min-max range across ranks, and peak memory."""
        if not self.prog_bar:
            return {}
        shown: dict[str, str] = {}
        for label, name in (("gpu", "gpu_utilization_percent"), ("cpu", "cpu_process_percent")):
            item = self._extremes.get(name)
            if item is not None:
                shown[label] = _range(item, "%")
                break  # GPU utilisation when there is a GPU, else the process's CPU
        for label, name in (("gpu_mem", "gpu_memory_used_mb"), ("rss", "cpu_process_rss_mb")):
            item = self._extremes.get(name)
            if item is not None:
                shown[label] = f"{item.max / 1024:.1f}G"
                break
        return shown

    def on_train_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if not trainer.loggers:
            raise MisconfigurationError(
                "DeviceStatsMonitor needs a logger, but the Trainer has logger=False. Pass a logger "
                "(logger=True or a TensorBoardLogger/CSVLogger) or remove DeviceStatsMonitor from callbacks."
            )
        self._cadence.reset()
        self._start(pl_module.device)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: TrainingModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = self._cadence.due(trainer)
        if step is None:
            return
        per_rank = rank_stats.gather(trainer, self._latest)  # every rank, same step: never rank-conditional
        self._extremes = rank_stats.extremes(per_rank)
        scalars = rank_stats.flatten(PREFIX, per_rank)
        if scalars and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)

    def on_train_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        self._shutdown()

    def on_exception(self, trainer: Trainer, pl_module: TrainingModule, exception: BaseException) -> None:
        self._shutdown()

    def teardown(self, trainer: Trainer, pl_module: TrainingModule, stage: str) -> None:
        self._shutdown()

    # -- the sampling thread ---------------------------------------------------------------------------
    def _start(self, device: torch.device) -> None:
        self._shutdown()
        gpu = _GpuProbe.open(device)
        self._probes = [
            probe for probe in (gpu, _CpuProbe() if self.cpu_stats else None) if probe is not None
        ]
        if not self._probes:
            return
        self._stop.clear()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="device-stats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        sample: dict[str, float] = {}
        for probe in self._probes:
            sample.update(probe.sample())
        self._latest = sample  # one reference assignment: the training thread never sees half a sample

    def _shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
            self._thread = None
        for probe in self._probes:
            if isinstance(probe, _GpuProbe):
                probe.close()
        self._probes = []


def _range(item: rank_stats.Extremes, unit: str) -> str:
    """`87%` when every rank agrees (or there is one), else `61-93%`."""
    low, high = round(item.min), round(item.max)
    return f"{high}{unit}" if low == high else f"{low}-{high}{unit}"
