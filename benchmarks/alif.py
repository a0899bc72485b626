"""ALIF on the GPU beside its peers, in one process: forward+backward of ``output.sum()``.

Recurrent (the ALIF GPU goal of docs/benchmarks.md), T=500, B=32, I=128, H=512, fp32 (TF32 off):
  evsnn ``ALIF(recurrent=True)`` on the CuPy kernels (default multi-Gaussian surrogate: dense
  backward recurrent product; truncated at 0.5: event-sparse), the evsnn PyTorch reference,
  a snntorch 1.0 ``RLeaky`` loop and norse 1.1 ``LSNNRecurrent`` (each where installed).
Feed-forward (the feed-forward LIF goal), T=500, B=32, N=16384, elementwise only (the input current is given):
  evsnn ``alif_scan`` on the CuPy kernels vs SpikingJelly 2.0's multi-step ``LIFNode``
  (``SJ_LIF_CUDA_IMPLEMENTATION`` defaults to ``triton`` here) and the evsnn reference.

Timing: CUDA events around one call, warm-up first, median of repeats. Prints one JSON line per
measurement and a table last. Usage: ``python benchmarks/alif.py [--out results.json] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("SJ_LIF_CUDA_IMPLEMENTATION", "triton")

import torch  # noqa: E402

RESULTS: list[dict] = []


def bench(fn: Callable[[], None], warm: int, rep: int) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def emit(**kw) -> None:
    RESULTS.append(kw)
    print(json.dumps(kw), flush=True)


def guarded(name: str, fn: Callable[[], None]) -> None:
    """Run one peer; a missing package or a failure is reported, not fatal."""
    try:
        fn()
    except Exception as exc:  # a peer that cannot run is reported as such
        emit(bench=name, error=f"{type(exc).__name__}: {exc}"[:300])
    torch.cuda.empty_cache()


def recurrent(T: int, B: int, n_in: int, H: int, quick: bool, skip_peers: bool = False) -> None:
    from evsnn.nn import ALIF
    from evsnn.surrogate import MultiGaussian

    dev = "cuda"
    x = torch.randn(T, B, n_in, device=dev)
    torch.manual_seed(0)
    shape = dict(T=T, B=B, I=n_in, H=H)

    def evsnn_layer(backend: str, surrogate, label: str, warm: int, rep: int) -> None:
        torch.manual_seed(0)
        layer = ALIF(n_in, H, recurrent=True, backend=backend, surrogate=surrogate, record_stats=False).to(dev)

        def fwd_bwd() -> None:
            spikes, _ = layer(x)
            spikes.sum().backward()

        def fwd() -> None:
            with torch.no_grad():
                layer(x)

        layer.record_stats = True  # once, outside the timing: spike rate and backward sparsity
        layer(x)
        rate = layer.last_stats.mean_event_fraction
        zero_g = float(layer.last_stats.backward_sparsity)
        layer.record_stats = False
        layer.zero_grad()
        emit(
            bench=f"evsnn_alif_rec_{label}_fwd_bwd",
            **shape,
            spike_rate=rate,
            zero_pseudo_derivative=zero_g,
            ms=bench(fwd_bwd, warm, rep),
        )
        emit(bench=f"evsnn_alif_rec_{label}_fwd", **shape, spike_rate=rate, ms=bench(fwd, warm, rep))

    guarded("evsnn_alif_rec_cupy", lambda: evsnn_layer("cupy", MultiGaussian(), "cupy", 3, 5 if quick else 20))
    guarded(
        "evsnn_alif_rec_cupy_trunc",
        lambda: evsnn_layer("cupy", MultiGaussian().truncate(0.5), "cupy_trunc0.5", 3, 5 if quick else 20),
    )
    guarded(
        "evsnn_alif_rec_cupy_trunc",
        lambda: evsnn_layer("cupy", MultiGaussian().truncate(0.1), "cupy_trunc0.1", 3, 5 if quick else 20),
    )
    if skip_peers:
        return
    guarded(
        "evsnn_alif_rec_reference", lambda: evsnn_layer("torch", MultiGaussian(), "reference", 1, 2 if quick else 3)
    )

    def snntorch_rleaky() -> None:
        import snntorch as snn

        fc = torch.nn.Linear(n_in, H).to(dev)
        rl = snn.RLeaky(beta=0.9, linear_features=H).to(dev)

        def f() -> None:
            spk, mem = rl.init_rleaky()
            out = []
            cur = fc(x)
            for t in range(T):
                spk, mem = rl(cur[t], spk, mem)
                out.append(spk)
            torch.stack(out).sum().backward()

        emit(bench="snntorch_rleaky_loop_fwd_bwd", **shape, ms=bench(f, 1, 2 if quick else 5))

    def norse_lsnn() -> None:
        import norse.torch as norse

        ls = norse.LSNNRecurrent(n_in, H).to(dev)

        def f() -> None:
            z, _ = ls(x)
            z.sum().backward()

        emit(bench="norse_lsnn_recurrent_fwd_bwd", **shape, ms=bench(f, 1, 2 if quick else 5))

    guarded("snntorch_rleaky_loop_fwd_bwd", snntorch_rleaky)
    guarded("norse_lsnn_recurrent_fwd_bwd", norse_lsnn)


def feed_forward(T: int, B: int, N: int, quick: bool) -> None:
    from evsnn.ops.alif_cupy import alif_scan_cuda

    from evsnn.functional import alif_scan

    dev = "cuda"
    shape = dict(T=T, B=B, N=N)
    current = (0.3 + torch.randn(T, B, N, device=dev)).requires_grad_(True)
    tau_mem = (20.0 + 5.0 * torch.randn(N, device=dev)).requires_grad_(True)
    tau_adapt = (150.0 + 10.0 * torch.randn(N, device=dev)).requires_grad_(True)
    b0 = torch.full((N,), 0.01, device=dev)
    beta = torch.full((N,), 1.8, device=dev)

    def evsnn_ff(fn, label: str, warm: int, rep: int) -> None:
        def fwd_bwd() -> None:
            spikes, _, _ = fn(current, None, tau_mem=tau_mem, tau_adapt=tau_adapt, b0=b0, beta=beta)
            spikes.sum().backward()

        def fwd() -> None:
            with torch.no_grad():
                fn(current, None, tau_mem=tau_mem, tau_adapt=tau_adapt, b0=b0, beta=beta)

        with torch.no_grad():
            rate = fn(current, None, tau_mem=tau_mem, tau_adapt=tau_adapt, b0=b0, beta=beta)[0].mean().item()
        emit(bench=f"evsnn_alif_ff_{label}_fwd_bwd", **shape, spike_rate=rate, ms=bench(fwd_bwd, warm, rep))
        emit(bench=f"evsnn_alif_ff_{label}_fwd", **shape, spike_rate=rate, ms=bench(fwd, warm, rep))
        current.grad = tau_mem.grad = tau_adapt.grad = None

    guarded("evsnn_alif_ff_cupy", lambda: evsnn_ff(alif_scan_cuda, "cupy", 3, 5 if quick else 20))

    def spikingjelly_lif() -> None:
        from spikingjelly.activation_based import neuron

        x = torch.randn(T, B, N, device=dev, requires_grad=True)
        lif = neuron.LIFNode(step_mode="m").to(dev)

        def f() -> None:
            lif.reset()
            lif(x).sum().backward()

        impl = os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION", "auto")
        emit(bench="spikingjelly_lif_multistep_fwd_bwd", impl=impl, **shape, ms=bench(f, 3, 5 if quick else 20))

    guarded("spikingjelly_lif_multistep_fwd_bwd", spikingjelly_lif)
    guarded("evsnn_alif_ff_reference", lambda: evsnn_ff(alif_scan, "reference", 1, 2))


def table() -> str:
    by = {r["bench"]: r for r in RESULTS if "ms" in r}

    def ms(name: str) -> float | None:
        return by[name]["ms"] if name in by else None

    lines = ["| measurement | ms | note |", "|---|---|---|"]
    for r in RESULTS:
        if "ms" in r:
            note = f"spike rate {r['spike_rate']:.3f}" if "spike_rate" in r else r.get("impl", "")
            if "zero_pseudo_derivative" in r:
                note += f", g(x) = 0 for {100 * r['zero_pseudo_derivative']:.0f} %"
            lines.append(f"| {r['bench']} | {r['ms']:.3f} | {note} |")
        elif "error" in r:
            lines.append(f"| {r['bench']} | — | {r['error']} |")
    ratios = []
    ours = ms("evsnn_alif_rec_cupy_fwd_bwd")
    for peer in ("snntorch_rleaky_loop_fwd_bwd", "norse_lsnn_recurrent_fwd_bwd", "evsnn_alif_rec_reference_fwd_bwd"):
        if ours and ms(peer):
            ratios.append(
                f"ALIF GPU goal: {peer} / evsnn cupy recurrent = {ms(peer) / ours:.1f}x (target >= 40x for the peers)"
            )
    ff = ms("evsnn_alif_ff_cupy_fwd_bwd")
    sj = ms("spikingjelly_lif_multistep_fwd_bwd")
    if ff and sj:
        ratios.append(
            f"feed-forward LIF goal: evsnn cupy feed-forward / SpikingJelly LIF = {ff / sj:.2f}x (target <= 2x)"
        )
    ref = ms("evsnn_alif_ff_reference_fwd_bwd")
    if ff and ref:
        ratios.append(f"feed-forward reference / cupy = {ref / ff:.1f}x")
    return "\n".join(lines + [""] + ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write all measurements as JSON here")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--skip-ff", action="store_true", help="only the recurrent workload")
    parser.add_argument("--skip-peers", action="store_true", help="no snntorch/norse/reference rows")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/alif.py needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    started = time.time()
    emit(
        bench="device",
        gpu=torch.cuda.get_device_name(0),
        torch=torch.__version__,
        date=time.strftime("%Y-%m-%d"),
        command="python benchmarks/alif.py" + (" --quick" if args.quick else ""),
    )
    recurrent(500, 32, 128, 512, args.quick, args.skip_peers)
    if not args.skip_ff:
        feed_forward(500, 32, 16384, args.quick)
    emit(bench="wall", seconds=round(time.time() - started, 1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(RESULTS, fh, indent=1)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
