"""Run the built-in example through `launch` on a GPU with DeviceStatsMonitor on; read its TensorBoard files.

Exits non-zero unless the events show GPU utilisation and power above zero. Run on a machine with a GPU:
    python tests/gpu/check_device_stats.py OUT_DIR
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(out: Path) -> int:
    command = [
        sys.executable, "-m", "launcher",
        "trainer.accelerator=gpu", "trainer.devices=1", "trainer.max_epochs=3", "trainer.log_every_n_steps=5",
        "callbacks.device_stats=true", f"run.root={out / 'runs'}",
    ]  # fmt: skip
    subprocess.run(command, check=True)
    (run_dir,) = (out / "runs" / "default").iterdir()
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    found = {tag: max(e.value for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]}
    for tag, peak in sorted(found.items()):
        if tag.startswith("device_stats/"):
            print(f"{tag}: max {peak:.4g}")
    utilisation = [peak for tag, peak in found.items() if "gpu_utilization" in tag]
    power = [peak for tag, peak in found.items() if "gpu_power" in tag]
    ok = bool(utilisation) and max(utilisation) > 0 and bool(power) and max(power) > 0
    print("GPU utilisation and power above zero in TensorBoard:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
