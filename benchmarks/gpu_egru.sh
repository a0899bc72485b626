#!/usr/bin/env bash
# EGRU CuPy backend on a GPU machine, in one go: NVRTC compile check, GPU tests, benchmark.
#   bash benchmarks/gpu_egru.sh [--quick]     (from the repository root; logs under $OUT or /tmp)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
out=${OUT:-/tmp/evsnn_gpu_egru}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | tee "$out/device.txt"
timeout 200 python3 -m pytest tests/ops/test_egru_cupy.py tests/ops/test_cuda_compile.py -q -x -p no:cacheprovider 2>&1 \
    | tee "$out/tests.log" | tail -n 25
tests_rc=$?
timeout 280 python3 benchmarks/egru.py "$@" 2>&1 | tee "$out/bench.log"
bench_rc=$?
echo "SUMMARY tests_rc=$tests_rc bench_rc=$bench_rc"
