"""Bad input gets a clear ValueError/TypeError naming what was expected and what came."""

from __future__ import annotations

import re

import pytest
import torch

import evsnn
from evsnn.ops.dispatch import BackendUnavailable

IN, H = 3, 4

pytestmark = pytest.mark.usefixtures("reference_backend")

LAYERS = {
    "ALIF": lambda **k: evsnn.ALIF(IN, H, **k),
    "EGRU": lambda **k: evsnn.EGRU(IN, H, **k),
    "DeltaGRU": lambda **k: evsnn.DeltaGRU(IN, H, **k),
    "DeltaLSTM": lambda **k: evsnn.DeltaLSTM(IN, H, **k),
}
CELLS = {
    "ALIFCell": lambda **k: evsnn.ALIFCell(IN, H, **k),
    "EGRUCell": lambda **k: evsnn.EGRUCell(IN, H, **k),
    "DeltaGRUCell": lambda **k: evsnn.DeltaGRUCell(IN, H, **k),
    "DeltaLSTMCell": lambda **k: evsnn.DeltaLSTMCell(IN, H, **k),
}
ALL = {**LAYERS, **CELLS, "LeakyReadout": lambda **k: evsnn.LeakyReadout(IN, H, **k)}


def _shape(name: str, *lead: int) -> tuple[int, ...]:
    return (*lead, IN) if "Cell" in name else (5, *lead, IN)


@pytest.mark.parametrize("name", list(ALL))
def test_wrong_rank(name):
    layer = ALL[name]()
    bad = torch.randn(2, 3, 2, IN) if "Cell" not in name else torch.randn(5, 2, IN)
    rank = "2-D" if "Cell" in name else "3-D"
    with pytest.raises(
        ValueError, match=rf"{name} expects a {rank} input .* got shape {re.escape(str(tuple(bad.shape)))}"
    ):
        layer(bad)


@pytest.mark.parametrize("name", list(ALL))
def test_wrong_feature_size(name):
    layer = ALL[name]()
    bad = torch.randn(*_shape(name, 2)[:-1], IN + 2)
    with pytest.raises(ValueError, match=rf"expects input_size={IN} features in the last dim, got {IN + 2}"):
        layer(bad)


@pytest.mark.parametrize("name", list(ALL))
def test_wrong_dtype(name):
    layer = ALL[name]()
    with pytest.raises(TypeError, match="input has dtype torch.float64 but the layer's parameters are torch.float32"):
        layer(torch.randn(*_shape(name, 2), dtype=torch.float64))
    with pytest.raises(TypeError, match="expects a torch.Tensor input, got list"):
        layer([[0.0] * IN])


@pytest.mark.parametrize("name", list(ALL))
def test_wrong_device(name):
    # the meta device stands in for "another device" on a CPU-only machine
    layer = ALL[name]()
    with pytest.raises(ValueError, match="input is on meta but the layer's parameters are on cpu"):
        layer(torch.empty(*_shape(name, 2), device="meta"))


def _good_state(name: str, batch: int):
    layer = ALL[name]()
    x = torch.randn(*_shape(name, batch))
    return layer, x, layer(x)[1]


# the NamedTuple states: ALIF's, and the cells' functional ones (cell.step); the nn.GRU-shaped
# h_0 / (h_0, c_0) states are checked in test_torch_conventions.py
@pytest.mark.parametrize("name", ["ALIF", *CELLS])
def test_state_of_the_wrong_shape_type_or_dtype(name):
    cell_or_layer = ALL[name]()
    layer = getattr(cell_or_layer, "step", cell_or_layer)
    x = torch.randn(*_shape(name, 2))
    state = layer(x)[1]
    first = state._fields[0]
    # Sequence layers' states are [num_layers*num_directions, B, H] like nn.GRU's h_n; cells' [B, H].
    wrong_batch = type(state)(*(t[..., :1, :] for t in state))
    with pytest.raises(
        ValueError, match=rf"state field '{first}' must have shape \((1, )?2, {H}\).*got \((1, )?1, {H}\)"
    ):
        layer(x, wrong_batch)
    with pytest.raises(TypeError, match=rf"{name} expects state as \w*State\(.*\) or None, got Tensor"):
        layer(x, getattr(state, first))
    with pytest.raises(TypeError, match=rf"state field '{first}' has dtype torch.float64, expected torch.float32"):
        layer(x, type(state)(*(t.double() for t in state)))
    with pytest.raises(ValueError, match=rf"state field '{first}' is on meta, expected cpu"):
        layer(x, type(state)(*(t.to("meta") for t in state)))
    with pytest.raises(TypeError, match=rf"{name} expects state as \w*State\("):
        layer(x, tuple(state)[:-1])
    # a plain tuple with the right fields is accepted, like nn.LSTM's (h, c)
    out_tuple, _ = layer(x, tuple(state))
    out_named, _ = layer(x, state)
    assert torch.equal(out_tuple, out_named)


def test_leaky_readout_state_of_the_wrong_shape():
    layer = evsnn.LeakyReadout(IN, H)
    with pytest.raises(ValueError, match=rf"LeakyReadout state must be a tensor of shape \(2, {H}\), got \(3, {H}\)"):
        layer(torch.randn(5, 2, IN), torch.zeros(3, H))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tau_mem": 0.0}, "tau_mem must be a finite number > 0, got 0.0"),
        ({"tau_mem": -3.0}, "tau_mem must be a finite number > 0, got -3.0"),
        ({"tau_adapt": (-150.0, 10.0)}, "tau_adapt mean must be a finite number > 0, got -150.0"),
        ({"tau_mem": (20.0, -1.0)}, "tau_mem std must be a finite number >= 0, got -1.0"),
        ({"tau_mem": torch.tensor([1.0, 2.0, 0.0, 4.0])}, "tau_mem must be finite and > 0 for every neuron"),
        ({"tau_mem": torch.ones(3)}, r"a tensor tau_mem must have shape \(4,\), got \(3,\)"),
        (
            {"tau_mem": [(5.0, 1.0), (-2.0, 1.0)], "tau_init": "multi_normal"},
            "tau_mem mean must be a finite number > 0",
        ),
        ({"tau_init": "uniform"}, "tau_mem init must be one of"),
        ({"b0": 0.0}, "b0 must be a finite number > 0, got 0.0"),
        ({"b0": float("nan")}, "b0 must be a finite number > 0, got nan"),
        ({"beta": -1.0}, "beta must be a finite number >= 0, got -1.0"),
    ],
)
def test_alif_construction_rejects_non_positive_constants(kwargs, match):
    with pytest.raises(ValueError, match=match):
        evsnn.ALIF(IN, H, **kwargs)
    with pytest.raises(ValueError, match=match):
        evsnn.ALIFCell(IN, H, **kwargs)


def test_readout_and_egru_and_delta_construction_errors():
    with pytest.raises(ValueError, match="tau must be a finite number > 0, got -1.0"):
        evsnn.LeakyReadout(IN, H, tau=-1.0)
    for cls in (evsnn.EGRU, evsnn.EGRUCell):
        with pytest.raises(ValueError, match="threshold must be a finite number > 0, got 0.0"):
            cls(IN, H, threshold=0.0)
        with pytest.raises(ValueError, match="threshold must be a finite number > 0, got -0.3"):
            cls(IN, H, threshold=-0.3)
        with pytest.raises(ValueError, match=r"reset must be one of \('output', 'threshold'\), got 'soft'"):
            cls(IN, H, reset="soft")
        with pytest.raises(ValueError, match="threshold_init must be one of"):
            cls(IN, H, threshold_init="gamma")
    with pytest.raises(ValueError, match=r"zoneout must be in \[0, 1\), got 1.0"):
        evsnn.EGRU(IN, H, zoneout=1.0)
    with pytest.raises(ValueError, match="dropconnect must be a finite number >= 0, got -0.1"):
        evsnn.EGRU(IN, H, dropconnect=-0.1)
    for cls in (evsnn.DeltaGRU, evsnn.DeltaLSTMCell):
        with pytest.raises(ValueError, match="theta_x must be a finite number >= 0, got -0.1"):
            cls(IN, H, theta_x=-0.1)
        with pytest.raises(TypeError, match="theta_h must be a number, got str"):
            cls(IN, H, theta_h="0.1")


@pytest.mark.parametrize("name", list(ALL))
def test_sizes_must_be_positive_ints(name):
    cls = type(ALL[name]())
    with pytest.raises(
        ValueError,
        match="hidden_size must be positive, got 0"
        if name != "LeakyReadout"
        else "output_size must be positive, got 0",
    ):
        cls(IN, 0)
    with pytest.raises(TypeError, match="input_size must be an int, got float"):
        cls(2.5, H)


@pytest.mark.parametrize("name", [*LAYERS, *CELLS])
def test_unknown_backend(name):
    with pytest.raises(
        ValueError, match=r"unknown backend 'cuda'; expected one of \('auto', 'torch', 'cupy', 'cpu_event'\)"
    ):
        ALL[name](backend="cuda")
    with pytest.raises(TypeError, match="backend must be a string"):
        ALL[name](backend=None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a CUDA GPU")
@pytest.mark.parametrize("name", list(LAYERS))
def test_cupy_backend_on_cpu_says_how_to_install(name):
    layer = LAYERS[name](backend="cupy")
    with pytest.raises(BackendUnavailable, match=r"backend 'cupy' cannot run .*pip install \"evsnn\[cuda1[23]\]\""):
        layer(torch.randn(5, 2, IN))
    assert issubclass(BackendUnavailable, RuntimeError)


def test_surrogate_argument_errors():
    with pytest.raises(ValueError, match="unknown surrogate 'relu'"):
        evsnn.ALIF(IN, H, surrogate="relu")
    with pytest.raises(TypeError, match="surrogate must be a evsnn.surrogate.Surrogate"):
        evsnn.EGRU(IN, H, surrogate=1.5)


def test_a_kernel_without_cupy_names_the_install(monkeypatch) -> None:
    """A scan called directly (dispatch, which checks CuPy first, bypassed) on a machine without
    CuPy fails at its first kernel compile with the install hint, not a bare ``No module named``."""
    import sys

    from evsnn.ops import cupy_runtime

    monkeypatch.setitem(sys.modules, "cupy", None)  # what `import cupy` finds when it is absent
    with pytest.raises(
        ImportError, match=r'egru\.cu kernels need CuPy\. CuPy is not installed: pip install "evsnn\[cuda13\]"'
    ):
        cupy_runtime._module.__wrapped__("egru.cu", ("-Dscalar_t=float",), 0)
