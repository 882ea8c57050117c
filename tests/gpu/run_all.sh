#!/usr/bin/env bash
# Everything that needs NVIDIA GPUs, in one go (run from the repository root on a machine with 1 to 8 GPUs):
# the NCCL/CUDA variants of the multi-process tests, the CUDA precision tests, the device-stats check through
# `launch`, and the GPU DDP benchmark. hydra-core, omegaconf and submitit may come as wheels in .whl/.
#   bash tests/gpu/run_all.sh OUT_DIR [all|tests|bench]
set -uo pipefail
out="${1:?usage: run_all.sh OUT_DIR [all|tests|bench]}"
phase="${2:-all}"
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi -L | tee "$out/machine.txt"
python3 -c 'import torch; print("torch", torch.__version__, "nccl", torch.cuda.nccl.version())' | tee -a "$out/machine.txt"

if [ "$phase" != bench ]; then
echo "== NCCL and CUDA tests"
timeout 420 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/gpu tests/multiproc -k "nccl or cuda or gpu" \
    2>&1 | tee "$out/gpu_tests.txt" | tail -25
echo "== device stats through launch"
timeout 120 python3 tests/gpu/check_device_stats.py "$out/stats" 2>&1 | tail -25 | tee "$out/device_stats.txt"
fi
[ "$phase" = tests ] && exit 0
echo "== GPU benchmark"
timeout 560 bash bench/gpu_suite.sh "$out/bench" 2
