#!/usr/bin/env bash
# GPU benchmark suite: the GPT-like DDP model by hand-written DDP, the trainer core and Lightning, interleaved,
# on 1, 2, 4 and 8 GPUs (those the machine has), REPS repetitions each; then a Markdown table with scaling.
#   bash bench/gpu_suite.sh OUT_DIR [REPS]
set -uo pipefail
out="${1:?usage: gpu_suite.sh OUT_DIR [REPS]}"
reps="${2:-2}"
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
gpus_available=$(python3 -c 'import torch; print(torch.cuda.device_count())')
impls="hand tc lightning"
declare -A model_args=([gpt]="" [tiny]="--batch 64 --warmup 50 --steps 400")
python3 -c 'import lightning' 2>/dev/null || impls="hand tc"
for rep in $(seq "$reps"); do
    for gpus in 1 2 4 8; do
        [ "$gpus" -le "$gpus_available" ] || continue
        for model in gpt tiny; do
            # The tiny model measures framework overhead, which varies little: one repetition is enough.
            [ "$model" = tiny ] && [ "$rep" -gt 1 ] && continue
            for impl in $impls; do
                echo "== rep $rep, $gpus GPU(s), $model, $impl"
                log="$out/log-$model-$impl-$gpus-$rep.txt"
                python3 -m torch.distributed.run --standalone --nproc-per-node="$gpus" bench/gpu_ddp.py \
                    --model "$model" --impl "$impl" --out "$out/gpu_ddp.jsonl" ${model_args[$model]} >"$log" 2>&1 \
                    || { echo "FAILED: see $log"; tail -20 "$log"; }
            done
        done
    done
done
python3 bench/gpu_report.py "$out/gpu_ddp.jsonl" | tee "$out/gpu_ddp.md"
