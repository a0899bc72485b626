#!/usr/bin/env bash
# ALIF CuPy kernels on a GPU machine, in one go: NVRTC build + GPU tests + benchmark.
# Run from the repository root: bash benchmarks/gpu_alif.sh [--quick]
# Peers (snntorch, norse, nir, nirtorch, spikingjelly, loguru, scienceplots) are installed from
# wheels in .whl/ when present (see the device README); without them those rows report an error.
# Logs and JSON land in $OUT (default /tmp/alif_gpu).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/alif_gpu}
mkdir -p "$OUT"
SITE=/tmp/alif_site
wheels=$(ls .whl/snntorch-*.whl .whl/norse-*.whl .whl/nir-*.whl .whl/nirtorch-*.whl .whl/spikingjelly-*.whl \
  .whl/loguru-*.whl .whl/scienceplots-*.whl 2>/dev/null)
if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $wheels \
    && export PYTHONPATH="$SITE"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"
# Build: compile every ALIF kernel once for this GPU (float and double) before timing anything.
timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/alif_build.log"
import time, torch
from evsnn.ops import cupy_runtime as rt, alif_cupy
t = time.time()
for dtype in (torch.float32, torch.float64):
    for name in ("alif_ff_forward", "alif_ff_backward", "alif_rec_forward", "alif_rec_backward"):
        k = rt.get_kernel(alif_cupy.SOURCE, name, dtype=dtype, device=torch.device("cuda"), defines=alif_cupy._DEFINES)
        print(name, dtype, "regs", k.attributes["num_regs"], "local", k.attributes["local_size_bytes"])
print(f"built in {time.time() - t:.1f}s")
PY
timeout 180 python3 -m pytest tests/ops/test_alif_cupy.py tests/ops/test_cuda_compile_alif.py -q -rfE -p no:cacheprovider \
  2>&1 | tee "$OUT/alif_tests.log" | tail -40
timeout 240 python3 benchmarks/alif.py --out "$OUT/alif_bench.json" "$@" 2>&1 | tee "$OUT/alif_bench.log"
echo "=== test summary"; tail -1 "$OUT/alif_tests.log"
