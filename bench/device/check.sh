#!/usr/bin/env bash
# What to run on the lent GPU machine, as one call of about eight minutes, after
# bench/device/build.sh here: the device tool's `run` with carry [".device-build"] and the
# command `bash bench/device/check.sh`. Writes its figures under $OUT.
#
#  1. The sinusoid MAML demo, shortened, with one worker on the GPU (`--device auto` picks it):
#     a worker's inner loop on CUDA, end to end.
#  2. bench/compare_mtl.py on the machine's CPU cores (16 there, 2 here): the multi-task step
#     against the PyTorch reference with one and two workers, where two processes of compute
#     are not bounded by two cores (issue 6's "two workers at least 1.7x one").
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=$PWD/.device-build/outerloop
out=${OUT:-/tmp/device-check}
mkdir -p "$out"
# The binary was built against this PyTorch's version (bench/device/build.sh): its libraries
# (TORCH_LIB names others, to try the script on a machine whose python has another version).
lib=${TORCH_LIB:-$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
{
    echo "== machine: $(nproc) cores; built against torch $(cat .device-build/torch-version)"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
    nvidia-smi -L
} 2>&1 | tee "$out/machine.txt"
echo "== 1. sinusoid MAML, one worker on the GPU"
rm -rf /tmp/demo-gpu
timeout 240 "$bin" demo --workers 1 --state-dir /tmp/demo-gpu --set meta.steps=1000 \
    --set eval.every=500 2>&1 | tee "$out/demo-gpu.txt" | tail -20
# Which device the worker took: the coordinator logs it at registration.
grep -h "worker registered" /tmp/demo-gpu/logs/coordinator.log | tee -a "$out/demo-gpu.txt"
echo "== 2. the multi-task step on the CPU cores"
timeout 400 python3 bench/compare_mtl.py --binary "$bin" --steps 100 --forms factored \
    2>&1 | tee "$out/mtl.txt"
cp bench/results/mtl-100.json "$out/" 2>/dev/null
