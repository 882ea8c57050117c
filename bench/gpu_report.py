"""Summarise `bench/gpu_ddp.py` records: median samples/s per model, implementation and GPU count."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import date

MODELS = {
    "gpt": "GPT-like model (12 layers, width 768, seq 512, bf16 autocast, batch 16 per GPU)",
    "tiny": "tiny MLP (32-64-10, bf16 autocast, batch 64 per GPU)",
}


def machine() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout
    except OSError:
        return "unknown GPU"
    names = [n.strip() for n in out.splitlines() if n.strip()]
    return f"{len(names)}x {names[0]}" if names else "unknown GPU"


def table(runs: dict[tuple[str, int], list[float]]) -> list[str]:
    median = {key: statistics.median(values) for key, values in runs.items()}
    lines = [
        "| implementation | GPUs | samples/s (median) | runs (min-max) | vs hand DDP | N-GPU/1-GPU | "
        "scaling efficiency |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (impl, gpus), value in sorted(median.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        hand, one_gpu = median.get(("hand", gpus)), median.get((impl, 1))
        ratio = f"{value / hand:.3f}x" if hand else "-"
        scaling = f"{value / one_gpu:.3f}x" if gpus > 1 and one_gpu else "-"
        efficiency = f"{value / one_gpu / gpus:.1%}" if gpus > 1 and one_gpu else "-"
        spread = f"{min(runs[(impl, gpus)]):.1f}-{max(runs[(impl, gpus)]):.1f}"
        lines.append(f"| {impl} | {gpus} | {value:.1f} | {spread} | {ratio} | {scaling} | {efficiency} |")
    return lines


def main(path: str) -> None:
    import torch

    runs: dict[str, dict[tuple[str, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            key = (record["impl"], record["gpus"])
            runs[record.get("model", "gpt")][key].append(record["samples_per_s"])
    print(
        f"# GPU DDP benchmark\n\n{machine()}, torch {torch.__version__}, {date.today()}; interleaved runs.\n"
    )
    for model, model_runs in runs.items():
        print(f"## {MODELS.get(model, model)}\n")
        print("\n".join(table(model_runs)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
