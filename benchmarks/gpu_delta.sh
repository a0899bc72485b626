#!/usr/bin/env bash
# Delta cells' CuPy backend on a GPU machine, in one go: GPU tests, then the benchmark.
#   bash benchmarks/gpu_delta.sh [--quick]     (from the repository root; logs under $OUT or /tmp)
# The kernels are compile-checked on CPU by tests/ops/test_cuda_compile_delta.py; a failing test
# run skips the benchmark (its numbers would mean nothing).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
out=${OUT:-/tmp/evsnn_gpu_delta}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | tee "$out/device.txt"
timeout 110 python3 -m pytest tests/ops/test_delta_cupy.py -q -x -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -n 30
tests_rc=$?
bench_rc=skipped
if [ "$tests_rc" = 0 ]; then
    timeout 165 python3 benchmarks/delta.py "$@" 2>&1 | tee "$out/bench.log"
    bench_rc=$?
fi
echo "SUMMARY tests_rc=$tests_rc bench_rc=$bench_rc"
