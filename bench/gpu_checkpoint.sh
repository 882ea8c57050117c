#!/usr/bin/env bash
# Checkpoint cost on one GPU: every implementation in the lean and the user profile, REPS interleaved rounds
# (the order rotates every round), then the Markdown table.
#   bash bench/gpu_checkpoint.sh OUT_DIR [REPS]
set -uo pipefail
out="${1:?usage: gpu_checkpoint.sh OUT_DIR [REPS]}"
reps="${2:-2}"
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
configs=("hand lean" "hand user" "hand_fsync user" "tc lean" "tc user" "lightning lean" "lightning user")
python3 -c 'import lightning' 2>/dev/null || configs=("${configs[@]:0:5}")
for rep in $(seq "$reps"); do
    count=${#configs[@]}
    for i in $(seq 0 $((count - 1))); do
        config="${configs[$(((i + rep) % count))]}"
        set -- $config
        workdir=$(mktemp -d /tmp/gpu-ckpt.XXXXXX)
        echo "== round $rep: $1 $2"
        python3 bench/gpu_checkpoint.py --impl "$1" --profile "$2" --workdir "$workdir" \
            --out "$out/gpu_checkpoint.jsonl" >"$out/log-$1-$2-$rep.txt" 2>&1 \
            || { echo "FAILED: $1 $2"; tail -20 "$out/log-$1-$2-$rep.txt"; }
        rm -rf "$workdir"
    done
done
python3 bench/gpu_checkpoint.py --report "$out/gpu_checkpoint.jsonl" | tee "$out/gpu_checkpoint.md"
