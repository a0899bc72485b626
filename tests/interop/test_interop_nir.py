"""NIR export/import: exact nodes round-trip through nir.write/nir.read; the rest raises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

nir = pytest.importorskip("nir")
pytest.importorskip("nirtorch")

import evsnn  # noqa: E402
from evsnn.functional import decay  # noqa: E402
from evsnn.interop import nir as enir  # noqa: E402

T, B, NI, H, C = 12, 3, 4, 7, 3


class _Net(nn.Module):
    def __init__(self, recurrent: bool):
        super().__init__()
        self.fc = nn.Linear(NI, NI)
        self.alif = evsnn.ALIF(NI, H, adaptive=False, recurrent=recurrent, backend="torch")
        self.readout = evsnn.LeakyReadout(H, C)

    def forward(self, x):
        spikes, _ = self.alif(self.fc(x))
        return self.readout(spikes)[0]


def _run_imported(module, x):
    state, outs = None, []
    for t in range(x.shape[0]):
        out, state = module(x[t], state)
        outs.append(out)
    return torch.stack(outs)


@pytest.mark.parametrize("recurrent", [False, True])
def test_roundtrip_through_file_reproduces_outputs(tmp_path, recurrent):
    torch.manual_seed(0)
    net = _Net(recurrent)
    x = torch.rand(T, B, NI) * 3
    ref = net(x)
    spikes_ref = net.alif(net.fc(x))[0]
    assert 0 < spikes_ref.mean() < 1
    path = tmp_path / "net.nir"
    nir.write(str(path), enir.export_to_nir(net))
    imported = enir.import_from_nir(nir.read(str(path)))
    torch.testing.assert_close(_run_imported(imported, x), ref, rtol=1e-5, atol=1e-6)


def test_parameter_mapping_by_hand():
    torch.manual_seed(0)
    dt = 1e-3
    net = _Net(recurrent=True)
    graph = enir.export_to_nir(net, dt=dt)
    sub = graph.nodes["alif"]
    alpha = decay(net.alif.tau_mem.detach()).double().numpy()
    np.testing.assert_allclose(sub.nodes["li"].tau, dt / (1 - alpha), rtol=1e-6)
    np.testing.assert_allclose(sub.nodes["li"].r, 1.0)
    np.testing.assert_allclose(sub.nodes["threshold"].threshold, 0.01, rtol=1e-6)
    np.testing.assert_allclose(sub.nodes["reset"].scale, -0.01 / (1 - alpha), rtol=1e-5)
    np.testing.assert_allclose(
        sub.nodes["w_in"].bias, (net.alif.bias_ih + net.alif.bias_hh).detach().numpy(), rtol=1e-6
    )
    assert ("threshold", "reset") in sub.edges and ("reset", "li") in sub.edges
    assert isinstance(sub.nodes["w_rec"], nir.Linear)
    ro = graph.nodes["readout"]
    alpha_o = decay(net.readout.tau.detach()).double().numpy()
    np.testing.assert_allclose(ro.nodes["li"].tau, dt / (1 - alpha_o), rtol=1e-6)
    assert isinstance(graph.nodes["fc"], nir.Affine)
    # Euler of this LI with the same dt is the readout's own decay.
    k = dt / ro.nodes["li"].tau
    np.testing.assert_allclose(1 - k, alpha_o, rtol=1e-6)
    assert math.isclose(float(k.max()), float((1 - alpha_o).max()), rel_tol=1e-6)


@pytest.mark.parametrize(
    "module,name",
    [
        (nn.Sequential(evsnn.ALIF(NI, H)), "0 (ALIF, adaptive=True)"),
        (nn.Sequential(nn.Linear(NI, NI), evsnn.EGRU(NI, H)), "1 (EGRU)"),
        (nn.Sequential(evsnn.DeltaGRU(NI, H)), "0 (DeltaGRU)"),
        (nn.Sequential(evsnn.DeltaLSTM(NI, H)), "0 (DeltaLSTM)"),
        (nn.Sequential(nn.Linear(NI, NI), nn.ReLU()), "1 (ReLU)"),
    ],
)
def test_modules_without_exact_node_raise_naming_the_module(module, name):
    with pytest.raises(ValueError, match=name.replace("(", r"\(").replace(")", r"\)")):
        enir.export_to_nir(module)


def test_composes_with_snntorch_and_norse_exporters():
    snn = pytest.importorskip("snntorch")
    norse_torch = pytest.importorskip("norse.torch")
    from evsnn.interop import snntorch as esnn

    # Per-neuron parameters: snntorch's exporter gives scalar β and threshold the shape ().
    leaky = snn.Leaky(beta=torch.full((H,), 0.9), threshold=torch.ones(H), init_hidden=True)
    graph = enir.export_to_nir(nn.Sequential(nn.Linear(NI, H), leaky, evsnn.LeakyReadout(H, C)))
    assert isinstance(graph.nodes["_1"], nir.LIF) and isinstance(graph.nodes["_2"], nir.NIRGraph)
    np.testing.assert_allclose(graph.nodes["_1"].tau, 1e-4 / (1 - 0.9), rtol=1e-5)  # snntorch's own mapping
    # norse's LIFBoxParameters are scalars too, so its node cannot pass NIR's type check.
    graph = enir.export_to_nir(nn.Sequential(nn.Linear(NI, H), norse_torch.LIFBoxCell()), type_check=False)
    assert isinstance(graph.nodes["_1"], nir.LIF)
    with pytest.raises(ValueError, match=r"1 \(Alpha\)"):
        enir.export_to_nir(nn.Sequential(nn.Linear(NI, H), snn.Alpha(alpha=0.9, beta=0.8, init_hidden=True)))
    with pytest.raises(ValueError, match=r"1 \(ALIF\)"):
        enir.export_to_nir(nn.Sequential(nn.Linear(NI, H), esnn.ALIF(init_hidden=True)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="dt"):
        enir.export_to_nir(nn.Linear(2, 2), dt=0.0)
    with pytest.raises(TypeError, match="nn.Module"):
        enir.export_to_nir("model")
    graph = nir.NIRGraph.from_list(nir.Affine(np.ones((2, 2)), np.zeros(2)), nir.Delay(np.ones(2)))
    with pytest.raises(ValueError, match="Delay"):
        enir.import_from_nir(graph)


def test_importing_evsnn_does_not_import_the_optional_libraries():
    import subprocess
    import sys

    code = (
        "import sys, evsnn, evsnn.interop; "
        "bad = [m for m in ('snntorch', 'norse', 'nir', 'nirtorch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
