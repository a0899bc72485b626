#!/usr/bin/env bash
# Every GPU check of the project in one call, for a GPU machine (see docs/benchmarks.md):
# the GPU tests of the three CuPy families side by side, then the EGRU benchmark (full), the B = 1
# inference rows of the delta benchmark and the recurrent ALIF benchmark (quick, with peers when the wheels
# in .whl/ are present).
#   bash benchmarks/gpu_all.sh     (from the repository root; logs under $OUT or /tmp/evsnn_gpu_all)
set -o pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/evsnn_gpu_all}
mkdir -p "$out"
wheels=$(ls .whl/snntorch-*.whl .whl/norse-*.whl .whl/nir-*.whl .whl/nirtorch-*.whl 2>/dev/null)
if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/all_site $wheels \
    && export PYTHONPATH=/tmp/all_site
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
files="test_alif_cupy test_delta_cupy test_egru_cupy test_gpu_perf_kernels test_layers test_errors"
pids=()
for f in $files; do
  timeout 150 python3 -m pytest "tests/$f.py" -q -p no:cacheprovider -rfEs > "$out/$f.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
for f in $files; do
  grep -E "^(FAILED|ERROR)" "$out/$f.log" | head -5
  echo "$f: $(tail -1 "$out/$f.log")"
done
timeout 200 python3 benchmarks/egru.py 2>&1 | tee "$out/egru_bench.log" | tail -30
timeout 40 python3 benchmarks/delta.py --b1 2>&1 | tee "$out/delta_bench.log" | tail -14
timeout 45 python3 benchmarks/alif.py --quick --skip-ff 2>&1 | tee "$out/alif_bench.log" | tail -14
echo "SUMMARY tests_rc=$rc"
