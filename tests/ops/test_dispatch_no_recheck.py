"""The CuPy scans trust dispatch: ``check_cuda`` runs when :func:`evsnn.ops.dispatch.resolve`
decides, never again inside the scan it returns; a direct call of a scan with bad arguments is
still refused with a clear error; every refusal of ``check_cuda`` stays reachable through dispatch.

No GPU here: the scans run on fake CUDA tensors (``FakeTensorMode``), where their custom ops run
their fake kernels, and the machine probe of ``check_cuda`` is replaced by "usable".
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from evsnn.ops import cupy_runtime as rt
from evsnn.ops import dispatch
from evsnn.ops.alif import cuda as alif_cuda
from evsnn.ops.delta import cuda as delta_cuda
from evsnn.ops.egru import cuda as egru_cuda
from evsnn.ops.family import FAMILIES
from evsnn.surrogate import Triangle

CUDA = torch.device("cuda")
MODULES = {"alif": alif_cuda, "egru": egru_cuda, "delta_gru": delta_cuda, "delta_lstm": delta_cuda}


class _NoKernelForm(Triangle):
    def kernel_spec(self):
        return None


def _arguments(family: str, device: str, dtype: torch.dtype = torch.float32) -> tuple[tuple, dict]:
    """Positional and keyword arguments of the family's scan, T = 4, B = 2, I = 3, H = 5."""
    t, b, i, h = 4, 2, 3, 5

    def z(*shape):
        return torch.zeros(*shape, device=device, dtype=dtype)

    if family == "alif":
        return (z(t, b, h), None), {"tau_mem": z(h) + 20.0, "tau_adapt": z(h) + 150.0, "weight_hh": z(h, h)}
    if family == "egru":
        return (z(t, b, i), None, z(3 * h, i), z(3 * h, h), z(3 * h), z(3 * h), z(h)), {}
    gates = 4 if family == "delta_lstm" else 3
    return (z(t, b, i), None, z(gates * h, i), z(gates * h, h), z(gates * h), z(gates * h)), {"theta_x": 0.1}


@pytest.fixture
def probe_usable(monkeypatch):
    """A machine where CuPy and a GPU are usable, and a counter on every ``check_cuda``: the one
    dispatch registered and the module-level one a scan could call."""
    dispatch._ensure_loaded("cupy")
    monkeypatch.setattr(rt, "unavailable_reason", lambda: None)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    calls: list[str] = []
    for module in set(MODULES.values()):
        real = module.check_cuda

        def counted(_real=real, _name=module.__name__, **config):
            calls.append(_name)
            return _real(**config)

        monkeypatch.setattr(module, "check_cuda", counted)
    for family in MODULES:
        backend = dispatch._REGISTRY[(family, "cupy")]
        monkeypatch.setitem(dispatch._REGISTRY, (family, "cupy"), replace(backend, check=counted_check(backend, calls)))
    return calls


def counted_check(backend: dispatch.Backend, calls: list[str]):
    def check(**config):
        calls.append(f"dispatch:{backend.family}")
        return backend.check(**config)

    return check


@pytest.mark.parametrize("family", list(MODULES))
def test_scan_does_not_recheck_after_dispatch(family, probe_usable):
    backend = dispatch.resolve(family, "cupy", device=CUDA, dtype=torch.float32, training=False)
    assert backend.name == "cupy"
    assert probe_usable == [f"dispatch:{family}"], "dispatch decides once"
    with FakeTensorMode():
        args, kwargs = _arguments(family, "cuda")
        out, state, trace = backend.fn(*args, **kwargs)
    assert out.shape[:2] == (4, 2) and out.device.type == "cuda"
    assert probe_usable == [f"dispatch:{family}"], "the scan ran check_cuda again"


@pytest.mark.parametrize("family", list(MODULES))
def test_direct_call_with_a_cpu_tensor_is_refused_clearly(family):
    args, kwargs = _arguments(family, "cpu")
    fn = FAMILIES[family].scan("cupy")
    with pytest.raises(ValueError, match=r"CUDA tensors, got a cpu tensor"):
        fn(*args, **kwargs)


@pytest.mark.parametrize("family", list(MODULES))
def test_direct_call_with_half_precision_is_refused_clearly(family):
    with FakeTensorMode():
        args, kwargs = _arguments(family, "cuda", torch.float16)
        fn = FAMILIES[family].scan("cupy")
        with pytest.raises(ValueError, match=r"supports? float32 and float64, got torch.float16"):
            fn(*args, **kwargs)


@pytest.mark.parametrize("family", ["alif", "egru"])
def test_direct_call_with_a_surrogate_without_kernel_form_is_refused(family):
    with FakeTensorMode():
        args, kwargs = _arguments(family, "cuda")
        fn = FAMILIES[family].scan("cupy")
        with pytest.raises(ValueError, match="has no kernel form"):
            fn(*args, **kwargs, surrogate=_NoKernelForm(0.3))


def test_egru_direct_call_refuses_zoneout_and_an_unknown_reset():
    with FakeTensorMode():
        args, _ = _arguments("egru", "cuda")
        with pytest.raises(ValueError, match="zoneout is not implemented"):
            egru_cuda.egru_scan_cuda(*args, zoneout=0.1)
        with pytest.raises(ValueError, match="reset must be one of"):
            egru_cuda.egru_scan_cuda(*args, reset="nonsense")


@pytest.mark.parametrize(
    "family, config, reason",
    [
        ("alif", {"dtype": torch.complex64}, "supports? float32 and float64"),
        ("alif", {"surrogate": _NoKernelForm(0.3)}, "has no kernel form"),
        ("egru", {"zoneout": 0.1}, "zoneout is not implemented"),
        ("egru", {"reset": "nonsense"}, "reset must be one of"),
        ("egru", {"surrogate": _NoKernelForm(0.3)}, "has no kernel form"),
        ("delta_gru", {"fixed_point": (3, 4)}, "fixed_point"),
        ("delta_gru", {"theta_x": torch.tensor(0.1)}, "must be a Python float"),
        ("delta_lstm", {"delta_rule": "inclusive", "theta_x": 0.0, "theta_h": 0.1}, "inclusive"),
        ("delta_lstm", {"dtype": torch.complex64}, "supports? float32 and float64"),
    ],
)
def test_every_refusal_is_reachable_through_dispatch(family, config, reason, probe_usable):
    """Explicit ``backend="cupy"`` requests that check_cuda refuses (bf16/fp16 are not among them:
    dispatch lowers those to the float32 kernels)."""
    config = {"dtype": torch.float32, **config}
    with pytest.raises(dispatch.BackendUnavailable, match=reason):
        dispatch.resolve(family, "cupy", device=CUDA, **config)
    assert probe_usable and probe_usable[-1] == f"dispatch:{family}"


def test_the_machine_probe_stays_in_check_cuda(monkeypatch):
    """Without CuPy or a GPU the refusal comes from dispatch (the probe), not from the scan."""
    dispatch._ensure_loaded("cupy")
    monkeypatch.setattr(rt, "unavailable_reason", lambda: "CuPy is not installed")
    for family, module in MODULES.items():
        assert module.check_cuda(device=CUDA, dtype=torch.float32) == "CuPy is not installed", family
        with pytest.raises(dispatch.BackendUnavailable, match="CuPy is not installed"):
            dispatch.resolve(family, "cupy", device=CUDA, dtype=torch.float32)
