"""torch.compile traces the CuPy backend as dispatch returns it: no ``torch.compiler.disable``.

Every raw-pointer read and weight packing of the CuPy path happens inside the bodies of its
custom ops (``evsnn::<family>_scan_cuda_fwd/_bwd``, ``evsnn::delta_scan_bptt_fwd/_bwd``), so the
Python part of each scan is traceable and a compiled model keeps each scan as one opaque node.

No GPU here, so what is shown is the tracing, on fake CUDA tensors (``FakeTensorMode``; the
machine probe, the SM count and the shared-memory limit are stood in for), never a kernel:

- inference: ``torch.compile(fullgraph=True)`` with AOTAutograd over ``dispatch.resolve`` and the
  scan it returns: one graph holding exactly the family's forward op;
- training: Dynamo captures the same single graph. AOTAutograd's joint trace of it cannot run
  here: torch's autograd engine refuses fake CUDA tensors without a GPU ("hasPrimaryContext
  expects a valid device index"), so the forward/backward op pairs are traced by AOTAutograd on
  meta tensors instead (the backward op lands in the backward graph);
- a first request for "cupy" made inside a compiled function loads the backend without a break;
- the public layers themselves (stack, dispatch and scan) compile to that one graph.

A GPU run of the compiled layers (outputs and gradients equal to eager) is
``tests/ops/test_compile.py::test_cupy_backend_compiles_as_an_opaque_op`` (marked gpu).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._subclasses.fake_tensor import FakeTensorMode

from evsnn.ops import cupy_runtime as rt
from evsnn.ops import dispatch
from evsnn.ops.alif import cuda as alif_cuda
from evsnn.ops.delta import cuda as delta_cuda
from evsnn.ops.egru import cuda as egru_cuda

T, B, IN, H = 4, 2, 3, 5
FWD_OP = {
    "alif": "evsnn.alif_scan_cuda_fwd",
    "egru": "evsnn.egru_scan_cuda_fwd",
    "delta_gru": "evsnn.delta_scan_bptt_fwd",
    "delta_lstm": "evsnn.delta_scan_bptt_fwd",
}
SCANS = {
    "alif": alif_cuda.alif_scan_cuda,
    "egru": egru_cuda.egru_scan_cuda,
    "delta_gru": delta_cuda.delta_gru_scan_cuda,
    "delta_lstm": delta_cuda.delta_lstm_scan_cuda,
}


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine where CuPy and an 8-SM GPU are usable, as far as the Python side can tell."""
    monkeypatch.setattr(rt, "unavailable_reason", lambda: None)
    monkeypatch.setattr(rt, "sm_count", lambda index: 8)
    monkeypatch.setattr(egru_cuda, "_smem_limit", lambda index: 227 * 1024)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    torch._dynamo.reset()
    yield FakeTensorMode()
    torch._dynamo.reset()


def _params(family: str, grad: bool) -> list[torch.Tensor]:
    """The scan's tensors after ``x``, created inside the active fake mode on "cuda"."""

    def p(*shape):
        return torch.randn(*shape, device="cuda").requires_grad_(grad)

    if family == "alif":
        return [p(H) + 20.0, p(H) + 150.0, p(H, H)]
    gates = {"egru": 3, "delta_gru": 3, "delta_lstm": 4}[family]
    params = [p(gates * H, IN), p(gates * H, H), p(gates * H), p(gates * H)]
    return params + [p(H)] if family == "egru" else params


def _layer_call(family: str):
    """What a layer does: resolve (inside the compiled function) and call the returned scan."""

    def call(x, *params):
        backend = dispatch.resolve(
            family, "cupy", device=x.device, dtype=x.dtype, shape=(T, B, H), training=torch.is_grad_enabled()
        )
        if family == "alif":
            tau_mem, tau_adapt, weight_hh = params
            out, state, _ = backend.fn(x, None, tau_mem=tau_mem, tau_adapt=tau_adapt, weight_hh=weight_hh)
        elif family == "egru":
            out, state, _ = backend.fn(x, None, *params)
        else:
            out, state, _ = backend.fn(x, None, *params, theta_x=0.1, theta_h=0.05)
        return out, state

    return call


def _recorder(graphs: list[list[str]]):
    def compiler(gm, example_inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "evsnn" in str(n.target)])
        return gm

    return compiler


@pytest.mark.parametrize("family", list(SCANS))
def test_registered_cupy_backend_is_the_scan_itself(family):
    dispatch._ensure_loaded("cupy")
    assert dispatch._REGISTRY[(family, "cupy")].fn is SCANS[family]


@pytest.mark.parametrize("family", list(SCANS))
def test_inference_compiles_to_one_graph_with_the_forward_op(family, fake_gpu):
    graphs: list[list[str]] = []
    compiled = torch.compile(_layer_call(family), fullgraph=True, backend=aot_autograd(fw_compiler=_recorder(graphs)))
    with fake_gpu, torch.no_grad():
        x = torch.randn(T, B, H if family == "alif" else IN, device="cuda")
        out, state = compiled(x, *_params(family, grad=False))
    assert graphs == [[FWD_OP[family] + ".default"]]
    assert out.shape == (T, B, H) and out.device.type == "cuda"
    assert state[0].shape == (B, H)


@pytest.mark.parametrize("family", list(SCANS))
def test_training_forward_is_captured_in_one_graph(family, fake_gpu):
    graphs: list[list[str]] = []
    compiled = torch.compile(_layer_call(family), fullgraph=True, backend=_recorder(graphs))
    with fake_gpu:
        x = torch.randn(T, B, H if family == "alif" else IN, device="cuda", requires_grad=True)
        out, _ = compiled(x, *_params(family, grad=True))
    assert graphs == [[FWD_OP[family]]]
    assert out.requires_grad


def _meta(*shape):
    return torch.randn(*shape, device="meta", requires_grad=True)


OP_PAIRS = {
    "egru": (
        lambda: (_meta(T, B, 3 * H), _meta(B, H), _meta(B, H), _meta(3 * H, H), _meta(3 * H), _meta(H)),
        lambda *a: torch.ops.evsnn.egru_scan_cuda_fwd(*a, False, 1, [0.3, 0.0, 0.0, 0.0], 0.0, 0.3)[:2],
    ),
    "alif": (
        lambda: (_meta(T, B, H), _meta(B, H), _meta(B, H), _meta(B, H), *(_meta(H) for _ in range(4)), _meta(H, H)),
        lambda *a: torch.ops.evsnn.alif_scan_cuda_fwd(*a, None, True, 0, [1.0, 0.5, 0.0, 0.0], 0.0)[:2],
    ),
}


@pytest.mark.parametrize("family", list(OP_PAIRS))
def test_cuda_op_pair_traces_through_aot_autograd_on_meta(family):
    make, call = OP_PAIRS[family]
    inputs = make()
    graphs: list[list[str]] = []
    torch._dynamo.reset()

    def loss(*a):
        return sum(o.sum() for o in call(*a))

    compiled = torch.compile(
        loss, fullgraph=True, backend=aot_autograd(fw_compiler=_recorder(graphs), bw_compiler=_recorder(graphs))
    )
    grads = torch.autograd.grad(compiled(*inputs), inputs)
    torch._dynamo.reset()
    op = f"evsnn.{family}_scan_cuda"
    assert graphs == [[f"{op}_fwd.default"], [f"{op}_bwd.default"]]
    assert [g.shape for g in grads] == [i.shape for i in inputs]


def test_first_request_inside_a_compiled_function_loads_without_a_break(fake_gpu, monkeypatch):
    """The backend modules are imported on the first request; importlib is opaque to Dynamo,
    so dispatch runs that step at trace time instead of breaking the graph."""
    fresh = dispatch._Registry({key: b for key, b in dispatch._REGISTRY.items() if key[1] == "torch"})
    monkeypatch.setattr(dispatch, "_REGISTRY", fresh)
    monkeypatch.setattr(dispatch, "_LOADED", set())
    monkeypatch.setattr(dispatch, "_CACHE", {})
    graphs: list[list[str]] = []
    compiled = torch.compile(_layer_call("egru"), fullgraph=True, backend=_recorder(graphs))
    with fake_gpu, torch.no_grad():
        compiled(torch.randn(T, B, IN, device="cuda"), *_params("egru", grad=False))
    assert graphs == [[FWD_OP["egru"]]]
    assert ("egru", "cupy") in fresh and "cupy" in dispatch._LOADED


LAYERS = {"alif": "ALIF", "egru": "EGRU", "delta_gru": "DeltaGRU", "delta_lstm": "DeltaLSTM"}


def _fake_cuda_layer(family: str):
    """A public layer with ``backend="cupy"`` whose parameters are fake CUDA tensors (built on the
    CPU, then moved inside the fake mode: the initialisers draw real random numbers)."""
    import evsnn

    return getattr(evsnn, LAYERS[family])(IN, H, backend="cupy", record_stats=False)


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("family", list(LAYERS))
def test_public_layer_compiles_fullgraph_on_cupy(family, train, fake_gpu):
    """The layer itself (stack, state handling, dispatch, the scan) is one graph on "cupy": the
    stack does not hide the CuPy scans behind a graph break."""
    layer = _fake_cuda_layer(family).train(train)
    graphs: list[list[str]] = []
    # Inference goes through AOTAutograd (the op's fake kernel runs); training is Dynamo's capture
    # (the joint trace needs a GPU, see the module docstring).
    backend = aot_autograd(fw_compiler=_recorder(graphs)) if not train else _recorder(graphs)
    # The compiled function returns the output only: under this test's outer FakeTensorMode the
    # real outputs are fake tensors, and Dynamo cannot rebuild the returned h_n (a tensor subclass)
    # around one; on a GPU the state is returned as in eager (tests/nn/test_torch_conventions.py).
    compiled = torch.compile(lambda x: layer(x)[0], fullgraph=True, backend=backend)
    with FakeTensorMode(allow_non_fake_inputs=True):
        layer.to_empty(device="cuda")
        x = torch.randn(T, B, IN, device="cuda")
        with torch.set_grad_enabled(train):
            out = compiled(x)
    op = FWD_OP[family] + ("" if train else ".default")
    assert graphs == [[op]]
    assert out.shape == (T, B, H) and out.device.type == "cuda"
    assert out.requires_grad == train
