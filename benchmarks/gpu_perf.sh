#!/usr/bin/env bash
# GPU performance follow-up (ALIF recurrent backward, delta forward, shared grid barrier), in one go:
# the GPU tests of the three CuPy families plus tests/ops/test_gpu_perf_kernels.py (4 processes side by
# side: correctness only), then the benchmark rows of the ALIF and delta GPU goals, each beside
# the previous version.
#   bash benchmarks/gpu_perf.sh          (from the repository root; logs under $OUT or /tmp/evsnn_gpu_perf)
set -o pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/evsnn_gpu_perf}
mkdir -p "$out"
wheels=$(ls .whl/snntorch-*.whl .whl/norse-*.whl .whl/nir-*.whl .whl/nirtorch-*.whl 2>/dev/null)
if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/perf_site $wheels \
    && export PYTHONPATH=/tmp/perf_site
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee "$out/device.txt"
pids=()
for f in test_alif_cupy test_delta_cupy test_egru_cupy test_gpu_perf_kernels; do
  timeout 75 python3 -m pytest "tests/$f.py" -q -p no:cacheprovider -rfE > "$out/$f.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
for f in test_alif_cupy test_delta_cupy test_egru_cupy test_gpu_perf_kernels; do
  grep -E "^(FAILED|ERROR)" "$out/$f.log" | head -5
  echo "$f: $(tail -1 "$out/$f.log")"
done
timeout 35 python3 benchmarks/alif.py --quick --skip-ff --out "$out/alif_bench.json" 2>&1 | tee "$out/alif_bench.log" | tail -22
timeout 30 python3 benchmarks/delta.py --b1 2>&1 | tee "$out/delta_bench.log" | tail -12
echo "SUMMARY tests_rc=$rc"
