"""Export evsnn models to NIR (``nir`` 1.x, traced by ``nirtorch``) and import them back.

Only exact mappings are exported. NIR's neurons are continuous-time; evsnn's are discrete with
one step = ``dt``, and NIR's integrators read as forward Euler with that ``dt`` (the convention of
snntorch's and norse's own exporters): ``v_t = v_{t−1} + (dt/τ)(v_leak − v_{t−1} + r·I_t)``.

- ``nn.Linear`` → ``nir.Affine`` (``nir.Linear`` without bias).
- [`evsnn.LeakyReadout`][evsnn.LeakyReadout] (``m_t = α m_{t−1} + (1 − α)(W s_t + b)``) → a subgraph
  ``Affine → LI`` with ``τ = dt/(1 − α)``, ``r = 1``, ``v_leak = 0``: Euler of that LI *is* the readout.
- non-adaptive [`evsnn.ALIF`][evsnn.ALIF] (``adaptive=False``, or ``beta == 0``) → a subgraph
  ``Affine(W_ih, b_ih + b_hh) → LI → Threshold(b0)`` with the reset as a recurrent ``Scale``
  and, if the layer is recurrent, ``Linear(W_hh)`` back into the LI:

      v_t = α v_{t−1} + (1 − α)(I_t − b0/(1 − α) · s_{t−1}) = α v_{t−1} + (1 − α) I_t − b0 s_{t−1}

  ``nir.LIF`` is *not* used: it resets to ``v_reset`` (a hard reset in the same step), while
  ALIF subtracts its threshold one step late (SPEC §2); mapping one onto the other would be a
  silent approximation.
- snntorch and norse modules are exported by their libraries' own extractors
  (``snntorch.export_nir``, ``norse.torch.utils.export_nir``), which must return a node.

Everything else — adaptive ALIF, EGRU, DeltaGRU/DeltaLSTM, the snntorch and norse adapters of
`evsnn.interop`, and any module no exporter knows — raises a ``ValueError`` naming the
module: NIR has no node for an adaptive threshold, a gated recurrent unit or a delta encoder.

`import_from_nir` builds a per-step ``torch`` module (``nirtorch.nir_to_torch``) whose
LI nodes run [`evsnn.functional.leaky_readout_step`][evsnn.functional.leaky_readout_step] and whose ``Threshold`` nodes spike
with the ALIF default surrogate, so an imported model trains like the exported one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import nir
import nirtorch
import numpy as np
import torch
from torch import Tensor, nn

from ..functional.alif import decay, euler_time_constant, euler_to_steps, leaky_readout_step
from ..nn.alif import ALIF, ALIFCell, LeakyReadout
from ..nn.delta import DeltaGRU, DeltaGRUCell, DeltaLSTM, DeltaLSTMCell
from ..nn.egru import EGRU, EGRUCell
from ..surrogate import MultiGaussian, Surrogate

__all__ = ["export_to_nir", "import_from_nir", "NIRLeakyIntegrator", "NIRThreshold", "NIRScale"]

_NO_NIR_NODE = (EGRU, EGRUCell, DeltaGRU, DeltaGRUCell, DeltaLSTM, DeltaLSTMCell, ALIFCell)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32 if t.dtype != torch.float64 else np.float64)


def _affine(weight: Tensor, bias: Tensor | None) -> nir.NIRNode:
    if bias is None:
        return nir.Linear(weight=_np(weight))
    return nir.Affine(weight=_np(weight), bias=_np(bias))


def _linear(module: nn.Linear) -> nir.NIRNode:
    return _affine(module.weight, module.bias)


def _euler_tau(tau_steps: Tensor, dt: float) -> np.ndarray:
    """NIR τ whose forward-Euler step reproduces the decay ``α = exp(−1/τ_steps)``."""
    return euler_time_constant(tau_steps.detach().double(), dt).cpu().numpy()


def _readout(module: LeakyReadout, dt: float) -> nir.NIRGraph:
    n = module.output_size
    return nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([module.input_size])),
            "linear": _linear(module.linear),
            "li": nir.LI(tau=_euler_tau(module.tau, dt), r=np.ones(n), v_leak=np.zeros(n)),
            "output": nir.Output(output_type=np.array([n])),
        },
        edges=[("input", "linear"), ("linear", "li"), ("li", "output")],
    )


def _alif(module: ALIF, dt: float, name: str) -> nir.NIRGraph:
    if module.num_layers != 1 or module.bidirectional:
        raise ValueError(
            f"cannot export {name} (ALIF, num_layers={module.num_layers}, bidirectional={module.bidirectional}) "
            "to NIR: export one-layer, unidirectional ALIF layers (stack them in an nn.Sequential)"
        )
    if module.adaptive and bool((module.beta != 0).any()):
        raise ValueError(
            f"cannot export {name} ({type(module).__name__}, adaptive=True) to NIR: NIR has no neuron with an "
            "adaptive threshold; only a non-adaptive ALIF (adaptive=False) has an exact NIR form"
        )
    n = module.hidden_size
    alpha = decay(module.tau_mem.detach().double())
    b0 = module.b0.detach().double()
    # b_hh enters every step, the first included, so it is folded into the input bias: a
    # recurrent edge carries nothing before the first spike step in NIR executors (nirtorch 2.6).
    bias = module.bias_ih
    if module.recurrent and module.bias_hh is not None:
        bias = module.bias_hh if bias is None else bias + module.bias_hh
    nodes: dict[str, nir.NIRNode] = {
        "input": nir.Input(input_type=np.array([module.input_size])),
        "w_in": _affine(module.weight_ih, bias),
        "li": nir.LI(tau=_euler_tau(module.tau_mem, dt), r=np.ones(n), v_leak=np.zeros(n)),
        "threshold": nir.Threshold(threshold=b0.cpu().numpy()),
        # The soft reset −b0·s_{t−1}, entered as a current scaled by 1/(1 − α) (see module docstring).
        "reset": nir.Scale(scale=(-b0 / (1.0 - alpha)).cpu().numpy()),
        "output": nir.Output(output_type=np.array([n])),
    }
    edges = [
        ("input", "w_in"),
        ("w_in", "li"),
        ("li", "threshold"),
        ("threshold", "reset"),
        ("reset", "li"),
        ("threshold", "output"),
    ]
    if module.recurrent:
        nodes["w_rec"] = nir.Linear(weight=_np(module.weight_hh))
        edges += [("threshold", "w_rec"), ("w_rec", "li")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def _library_extractors(dt: float) -> tuple[list[tuple[type, Callable[[nn.Module], Any]]], tuple[type, ...]]:
    """(module type, extractor) pairs of snntorch's and norse's own exporters, where installed,
    and the classes of the evsnn adapters (which no NIR node describes)."""
    pairs: list[tuple[type, Callable[[nn.Module], Any]]] = []
    adapters: list[type] = []
    try:
        import snntorch as snn
        from snntorch.export_nir import _extract_snntorch_module

        from . import snntorch as esnn

        adapters += [esnn.ALIF, esnn.EGRU, esnn.DeltaGRU, esnn.DeltaLSTM]
        pairs += [(cls, _extract_snntorch_module) for cls in (snn.Leaky, snn.Synaptic, snn.RLeaky, snn.RSynaptic)]
    except ImportError:
        pass
    try:
        import norse.torch as norse_torch
        from norse.torch.utils.export_nir import _extract_norse_module

        from . import norse as enorse

        adapters += [enorse.ALIFCell, enorse.EGRUCell, enorse.DeltaGRUCell, enorse.DeltaLSTMCell]
        kinds = (norse_torch.LIFCell, norse_torch.LIFBoxCell, norse_torch.LIBoxCell, norse_torch.IAFCell)
        pairs += [(cls, lambda m, _dt=dt: _extract_norse_module(m, dt=_dt)) for cls in kinds]
    except ImportError:
        pass
    return pairs, tuple(adapters)


def _checked(extract: Callable[[nn.Module], Any], name: str) -> Callable[[nn.Module], nir.NIRNode]:
    def run(module: nn.Module) -> nir.NIRNode:
        node = extract(module)
        if node is None:  # both libraries' extractors return None for modules they do not know
            raise ValueError(
                f"cannot export {name} ({type(module).__name__}) to NIR: its library's exporter has no node for it"
            )
        return node

    return run


def export_to_nir(model: nn.Module, dt: float = 1e-3, *, type_check: bool = True) -> nir.NIRGraph:
    """The NIR graph of ``model``, one evsnn step = ``dt`` seconds (see the module docstring).

    ``model`` is traced with ``nirtorch.torch_to_nir`` (torch.fx): an ``nn.Sequential`` or a
    module whose ``forward`` chains its children, unpacking ``(out, state)`` pairs of evsnn
    layers with ``[0]``. Raises ``ValueError`` naming the first module without an exact node.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_to_nir expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    pairs, adapters = _library_extractors(float(dt))
    known = {cls for cls, _ in pairs}
    for name, module in model.named_modules():
        label = name or "the model"
        if isinstance(module, _NO_NIR_NODE) or (adapters and isinstance(module, adapters)):
            raise ValueError(
                f"cannot export {label} ({type(module).__name__}) to NIR: NIR has no node for an "
                "event-based GRU, a delta-encoded cell or a single-step evsnn neuron"
            )
        if isinstance(module, ALIF):
            _alif(module, float(dt), label)  # raises for an adaptive layer, before tracing
    names = {id(m): (n or "the model") for n, m in model.named_modules()}
    module_map: dict[type, Callable[[nn.Module], nir.NIRNode]] = {
        nn.Linear: _linear,
        LeakyReadout: lambda m: _readout(m, float(dt)),
        ALIF: lambda m: _alif(m, float(dt), names.get(id(m), "ALIF")),
    }
    for cls, extract in pairs:
        module_map[cls] = _checked(extract, cls.__name__)
    for name, module in model.named_modules():
        # The tracer treats the map's types as leaves and looks them up by exact type. The
        # model itself counts too: a bare nn.GRU would otherwise fail inside torch.fx.
        mapped = type(module) in module_map
        if not mapped and (not list(module.children()) or isinstance(module, tuple(module_map))):
            label = name or "the model"
            raise ValueError(f"cannot export {label} ({type(module).__name__}) to NIR: no exporter knows it")
    stateful = {ALIF, LeakyReadout} | known
    return nirtorch.torch_to_nir(model, module_map, default_dict=None, type_check=type_check, stateful_modules=stateful)


class NIRLeakyIntegrator(nn.Module):
    """A NIR ``LI`` node as one step of [`evsnn.functional.leaky_readout_step`][evsnn.functional.leaky_readout_step].

    Euler with ``dt``: ``v_t = (1 − dt/τ) v_{t−1} + (dt/τ)·r·I_t`` (``v_leak`` must be 0), i.e.
    the readout with ``α = 1 − dt/τ``. ``forward(x, state=None) -> (v, v)``.
    """

    def __init__(self, tau: Tensor, r: Tensor, dt: float):
        super().__init__()
        k = dt / tau.double()
        if not bool(((k > 0) & (k <= 1 - math.exp(-1.0) + 1e-12)).all()):
            raise ValueError(
                f"LI node needs dt/tau in (0, 1 - exp(-1)] (a time constant of at least one step), got {k.tolist()}"
            )
        # τ in steps such that exp(−1/τ) = 1 − dt/τ_NIR.
        self.tau = nn.Parameter(euler_to_steps(tau.double(), dt).float())
        self.register_buffer("r", r.float())

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v = leaky_readout_step(x * self.r, state, tau=self.tau)
        return v, v


class NIRThreshold(nn.Module):
    """A NIR ``Threshold`` node: ``H(x − θ)``, with a surrogate gradient for training."""

    def __init__(self, threshold: Tensor, surrogate: Surrogate | None = None):
        super().__init__()
        self.register_buffer("threshold", threshold.float())
        self.surrogate = surrogate if surrogate is not None else MultiGaussian()

    def forward(self, x: Tensor) -> Tensor:
        return self.surrogate(x - self.threshold)


class NIRScale(nn.Module):
    """A NIR ``Scale`` node: ``x ⊙ s``."""

    def __init__(self, scale: Tensor):
        super().__init__()
        self.register_buffer("scale", scale.float())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _import_affine(node: nir.Affine) -> nn.Linear:
    # nirtorch 2.6's default Affine map assigns the bias to ``weight.bias``: the bias is lost.
    out_f, in_f = node.weight.shape
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(node.weight))
        layer.bias.copy_(torch.as_tensor(node.bias))
    return layer


def _import_linear(node: nir.Linear) -> nn.Linear:
    out_f, in_f = node.weight.shape
    layer = nn.Linear(in_f, out_f, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(node.weight))
    return layer


def _import_li(node: nir.LI, dt: float) -> NIRLeakyIntegrator:
    if np.any(np.asarray(node.v_leak) != 0):
        raise ValueError(
            f"only LI nodes with v_leak = 0 can be imported, got v_leak={np.asarray(node.v_leak).tolist()}"
        )
    return NIRLeakyIntegrator(torch.as_tensor(np.asarray(node.tau)), torch.as_tensor(np.asarray(node.r)), dt)


def _order_from_inputs(graph: nir.NIRGraph) -> None:
    """Order each graph's nodes breadth-first from its inputs, in place.

    ``nir.read`` returns nodes sorted by name, and nirtorch 2.6 fails to wire a subgraph that
    comes before the nodes feeding it ("'GraphModule' object has no attribute 'items'").
    """
    order = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
    seen = set(order)
    i = 0
    while i < len(order):
        for src, dst in graph.edges:
            if src == order[i] and dst not in seen:
                seen.add(dst)
                order.append(dst)
        i += 1
    order += [k for k in graph.nodes if k not in seen]
    graph.nodes = {k: graph.nodes[k] for k in order}
    for node in graph.nodes.values():
        if isinstance(node, nir.NIRGraph):
            _order_from_inputs(node)


def import_from_nir(graph: nir.NIRGraph | str, dt: float = 1e-3, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A per-step torch module for a NIR graph of ``Affine``/``Linear``, ``LI``, ``Threshold``
    and ``Scale`` nodes (what `export_to_nir` writes for evsnn layers).

    Call it like nirtorch's modules: ``out, state = module(x_t)``, then
    ``out, state = module(x_{t+1}, state)``. Other node types raise ``ValueError``.
    """
    if isinstance(graph, str):
        graph = nir.read(graph)
    allowed = (nir.Input, nir.Output, nir.Affine, nir.Linear, nir.LI, nir.Threshold, nir.Scale, nir.NIRGraph)

    def check(g: nir.NIRGraph, prefix: str) -> None:
        for key, node in g.nodes.items():
            if not isinstance(node, allowed):
                raise ValueError(f"cannot import NIR node {prefix}{key} ({type(node).__name__}) into evsnn")
            if isinstance(node, nir.NIRGraph):
                check(node, f"{prefix}{key}.")

    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"import_from_nir expects a nir.NIRGraph or a path, got {type(graph).__name__}")
    check(graph, "")
    _order_from_inputs(graph)
    node_map = {
        nir.Affine: _import_affine,
        nir.Linear: _import_linear,
        nir.LI: lambda n: _import_li(n, float(dt)),
        nir.Threshold: lambda n: NIRThreshold(torch.as_tensor(np.asarray(n.threshold))),
        nir.Scale: lambda n: NIRScale(torch.as_tensor(np.asarray(n.scale))),
    }
    return nirtorch.nir_to_torch(graph, node_map, dtype=dtype)
