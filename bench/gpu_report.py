"""Summarise `bench/gpu_ddp.py` records: median samples/s per implementation and GPU count, and ratios."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import date


def machine() -> str:
    try:
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.split("\n")
        names = [n for n in names if n.strip()]
        return f"{len(names)}x {names[0]}" if names else "unknown GPU"
    except OSError:
        return "unknown GPU"


def main(path: str) -> None:
    import torch

    runs: dict[tuple[str, int], list[float]] = defaultdict(list)
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            runs[(record["impl"], record["gpus"])].append(record["samples_per_s"])
    median = {key: statistics.median(values) for key, values in runs.items()}
    print(
        f"GPT-like model (12x768, seq 512, bf16 autocast, batch 16/GPU) on {machine()}, "
        f"torch {torch.__version__}, {date.today()}\n"
    )
    print("| implementation | GPUs | samples/s (median) | runs (min-max) | vs hand DDP | 2-GPU/1-GPU |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (impl, gpus), value in sorted(median.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        hand = median.get(("hand", gpus))
        one_gpu = median.get((impl, 1))
        ratio = f"{value / hand:.3f}x" if hand else "-"
        scaling = f"{value / one_gpu:.3f}x" if gpus > 1 and one_gpu else "-"
        spread = f"{min(runs[(impl, gpus)]):.1f}-{max(runs[(impl, gpus)]):.1f}"
        print(f"| {impl} | {gpus} | {value:.1f} | {spread} | {ratio} | {scaling} |")


if __name__ == "__main__":
    main(sys.argv[1])
