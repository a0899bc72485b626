"""Operation and energy profiles of event-driven networks, and replayed neuron traces.

`profile` runs a model once (optionally with a backward pass) and reports, for every
layer that records [`LayerStats`][evsnn.stats.LayerStats] (``ALIF``, ``EGRU``, ``DeltaGRU``,
``DeltaLSTM``, ...): the event fraction per step, the dense multiply-accumulates (MACs) the same
layer would do, the synaptic event operations it needed, the backward sparsity, and an energy
estimate. The energy counts synaptic operations only (the matrix products), not the elementwise
neuron updates nor memory traffic, with these per-operation energies:

- a 32-bit float MAC: 4.6 pJ (multiply 3.7 pJ + add 0.9 pJ),
- a 32-bit float accumulate (AC): 0.9 pJ,

from M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
45 nm CMOS at 0.9 V — the figures used across the SNN literature to compare dense MACs with
spike-driven accumulates. A binary spike selects a weight column to add (an AC); a graded event
(an EGRU output, a delta) multiplies it (a MAC). Dense products are always MACs.

`reference_traces` replays a layer with the reference scans of [`evsnn.functional`][evsnn.functional]
and returns its internal traces (ALIF membrane and threshold, EGRU internal state, deltas).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional.alif import ALIFState, ALIFTrace
from .functional.delta import DeltaTrace
from .functional.egru import EGRUTrace
from .nn import ALIF, EGRU, DeltaGRU, DeltaLSTM
from .nn._stack import single_direction_state
from .ops.family import Family
from .stats import LayerStats

__all__ = [
    "ENERGY_PJ_45NM",
    "ENERGY_SOURCE",
    "LayerProfile",
    "Profile",
    "profile",
    "synaptic_ops",
    "LayerTraces",
    "reference_traces",
]

ENERGY_PJ_45NM: dict[str, float] = {"mac": 4.6, "ac": 0.9}
ENERGY_SOURCE = (
    "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm, 0.9 V: "
    "32-bit float MAC = multiply 3.7 pJ + add 0.9 pJ = 4.6 pJ; 32-bit float accumulate (AC) = 0.9 pJ. "
    "Synaptic operations only; elementwise neuron updates and memory traffic are not counted."
)


@dataclass
class LayerProfile:
    """One layer's line of a `Profile`; energies in picojoules.

    ``neurons`` is the number of units per sample whose state a step updates (0 for a synaptic
    layer: ``nn.Linear``, ``nn.Conv*``). For a synaptic layer ``event_fraction`` is the fraction of
    nonzero inputs (the events it consumes; it emits none) and ``event_ops`` the weight rows those
    inputs touch.
    """

    name: str
    kind: str
    event_fraction: float
    event_fraction_per_step: list[float]
    dense_macs: int
    event_ops: int
    input_event_ops: int | None
    input_binary: bool
    events_binary: bool
    ops_saved_fraction: float
    backward_sparsity: float | None
    input_event_fraction: float | None
    dense_energy_pj: float
    event_energy_pj: float
    neurons: int = 0

    @property
    def energy_ratio(self) -> float:
        """``dense / event`` energy (``inf`` when no event operation was needed)."""
        return self.dense_energy_pj / self.event_energy_pj if self.event_energy_pj > 0 else float("inf")


@dataclass
class Profile:
    """Per-layer operation counts and energy estimate of one pass; see `profile`."""

    layers: list[LayerProfile]
    energy_pj_per_op: dict[str, float]
    energy_source: str
    forward_ms: float
    backward_ms: float | None
    input_shape: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def dense_macs(self) -> int:
        return sum(p.dense_macs for p in self.layers)

    @property
    def event_ops(self) -> int:
        return sum(p.event_ops for p in self.layers)

    @property
    def dense_energy_pj(self) -> float:
        return sum(p.dense_energy_pj for p in self.layers)

    @property
    def event_energy_pj(self) -> float:
        return sum(p.event_energy_pj for p in self.layers)

    def __getitem__(self, name: str) -> LayerProfile:
        for p in self.layers:
            if p.name == name:
                return p
        raise KeyError(f"no layer {name!r} in this profile; layers: {[p.name for p in self.layers]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON-serialisable) with per-layer rows and totals."""
        layers = []
        for p in self.layers:
            row = asdict(p)
            row["energy_ratio"] = p.energy_ratio if p.event_energy_pj > 0 else None
            layers.append(row)
        return {
            "layers": layers,
            "totals": {
                "dense_macs": self.dense_macs,
                "event_ops": self.event_ops,
                "ops_saved_fraction": 1.0 - self.event_ops / self.dense_macs if self.dense_macs else 0.0,
                "dense_energy_pj": self.dense_energy_pj,
                "event_energy_pj": self.event_energy_pj,
            },
            "energy_pj_per_op": dict(self.energy_pj_per_op),
            "energy_source": self.energy_source,
            "forward_ms": self.forward_ms,
            "backward_ms": self.backward_ms,
            "input_shape": list(self.input_shape),
            "skipped": dict(self.skipped),
            **self.extra,
        }

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def table(self) -> str:
        """A fixed-width text table, one row per layer and a total row."""
        head = (
            "layer",
            "kind",
            "events/step",
            "dense MACs",
            "event ops",
            "saved",
            "bwd sparse",
            "dense nJ",
            "event nJ",
        )
        rows = [head]
        for p in self.layers:
            rows.append(
                (
                    p.name,
                    p.kind,
                    f"{p.event_fraction:.4f}",
                    f"{p.dense_macs:,}",
                    f"{p.event_ops:,}",
                    f"{p.ops_saved_fraction:.1%}",
                    "-" if p.backward_sparsity is None else f"{p.backward_sparsity:.1%}",
                    f"{p.dense_energy_pj / 1e3:.4g}",
                    f"{p.event_energy_pj / 1e3:.4g}",
                )
            )
        saved = 1.0 - self.event_ops / self.dense_macs if self.dense_macs else 0.0
        rows.append(
            (
                "total",
                "",
                "",
                f"{self.dense_macs:,}",
                f"{self.event_ops:,}",
                f"{saved:.1%}",
                "",
                f"{self.dense_energy_pj / 1e3:.4g}",
                f"{self.event_energy_pj / 1e3:.4g}",
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(-1, "-" * len(lines[0]))
        timing = f"forward {self.forward_ms:.2f} ms" + (
            "" if self.backward_ms is None else f", backward {self.backward_ms:.2f} ms"
        )
        energies = ", ".join(f"{k.upper()} {v} pJ" for k, v in self.energy_pj_per_op.items())
        lines.append(f"input {list(self.input_shape)}; {timing}; energy per op: {energies}")
        if self.skipped:
            lines.append("not counted: " + ", ".join(f"{n} ({k})" for n, k in self.skipped.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _family(layer: nn.Module) -> Family | None:
    family = getattr(layer, "neuron_family", None)
    return family if isinstance(family, Family) else None


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, Tensor):
                return item
    raise TypeError(
        f"profile(backward=True) without loss_fn needs the model to return a tensor or a tuple starting with one, "
        f"got {type(out).__name__}"
    )


def _sync(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _check_energy(energy: Mapping[str, float] | None) -> dict[str, float]:
    if energy is None:
        return dict(ENERGY_PJ_45NM)
    if not isinstance(energy, Mapping) or set(energy) != {"mac", "ac"}:
        raise ValueError(f"energy must be a mapping with exactly the keys 'mac' and 'ac' (pJ per op), got {energy!r}")
    out = {}
    for k, v in energy.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"energy[{k!r}] must be a number >= 0 (pJ), got {v!r}")
        out[k] = float(v)
    return out


_SYNAPTIC_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def synaptic_ops(layer: nn.Module, inp: Tensor) -> tuple[int, Tensor]:
    """``(dense MACs, event operations)`` of one call of a dense synaptic layer on ``inp``.

    Dense: every weight times every input position (``nn.Linear``: rows · in · out;
    ``nn.Conv*``: output positions · out channels · in channels / groups · kernel size). Event
    operations: the weights that the nonzero inputs touch (``nn.Linear``: nonzero inputs · out
    features; ``nn.Conv*``: the convolution of the nonzero mask with a kernel of ones, so that
    borders, stride and dilation count exactly). The event count stays a tensor (no host sync).
    """
    if not isinstance(inp, Tensor):
        raise TypeError(f"synaptic_ops expects a tensor input, got {type(inp).__name__}")
    with torch.no_grad():
        mask = (inp != 0).to(inp.dtype if inp.is_floating_point() else torch.float32)
        if isinstance(layer, nn.Linear):
            rows = inp.numel() // layer.in_features
            return rows * layer.in_features * layer.out_features, mask.sum() * layer.out_features
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if layer.padding_mode != "zeros":
                raise ValueError(
                    f"synaptic_ops counts zero-padded convolutions, got padding_mode={layer.padding_mode!r}"
                )
            conv = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}[type(layer)]
            ones = torch.ones_like(layer.weight, dtype=mask.dtype)
            touched = conv(mask, ones, None, layer.stride, layer.padding, layer.dilation, layer.groups)
            fan_in = layer.weight[0].numel()  # in_channels / groups · kernel size
            return touched.numel() * fan_in, touched.sum()
    raise TypeError(f"synaptic_ops counts nn.Linear and nn.Conv1d/2d/3d layers, got {type(layer).__name__}")


def _inside(name: str, ancestors: set[str]) -> bool:
    """Whether the module called ``name`` lies strictly inside one of the modules ``ancestors``."""
    if name and "" in ancestors:
        return True
    parts = name.split(".")
    return any(".".join(parts[:i]) in ancestors for i in range(1, len(parts)))


def _merge_steps(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """One call's record from several one-step calls of a step-wise module (a neuron or its
    Linear called once per time step): steps concatenated, operations summed."""
    stats = [c["stats"] for c in calls]
    nnz = [c["input_nnz"] for c in calls]
    extra = dict(stats[0].extra)
    if all("input_event_ops" in st.extra for st in stats):
        extra["input_event_ops"] = sum(st.extra["input_event_ops"] for st in stats)
    merged = LayerStats(
        layer=stats[0].layer,
        event_fraction=torch.cat([st.event_fraction.reshape(-1) for st in stats]),
        dense_macs=sum(int(st.dense_macs) for st in stats),
        event_ops=sum(st.event_ops for st in stats),
        extra=extra,
    )
    return {
        **calls[0],
        "stats": merged,
        "input_nnz": None if any(n is None for n in nnz) else sum(nnz),
        "input_binary": all(c["input_binary"] for c in calls),
    }


def profile(
    model: nn.Module,
    x: Tensor,
    *,
    backward: bool = False,
    loss_fn: Callable[[Any], Tensor] | None = None,
    energy: Mapping[str, float] | None = None,
    energy_source: str | None = None,
    warmup: bool = True,
) -> Profile:
    """Run ``model(x)`` once and profile its neurons and its dense synaptic layers.

    Counted: every module with a ``last_stats`` [`LayerStats`][evsnn.stats.LayerStats] attribute (the
    [`evsnn.nn`][evsnn.nn] layers; the [`evsnn.interop.snntorch`][evsnn.interop.snntorch] neurons, which record it while
    ``profile`` runs), the outermost one where such modules nest, and every
    ``nn.Linear``/``nn.Conv1d/2d/3d`` outside them (dense synaptic operations, counted by
    `synaptic_ops`). The leaf modules whose operations are in no row (a ``snn.Leaky``, a
    pooling layer, ...) are named in `Profile.skipped`.

    With ``warmup=True`` (default) one untimed ``model(x)`` under ``torch.no_grad()`` runs
    first, so that ``forward_ms`` times a steady call rather than first-use costs (lazy imports,
    kernel compilation, allocator growth: seconds on a first call). Pass ``warmup=False`` when a
    forward call changes the model (e.g. BatchNorm running statistics in training mode).

    With ``backward=True`` the forward pass records the graph (so that backward sparsity is
    measured: the fraction of units whose pseudo-derivative is exactly zero) and
    ``loss_fn(output).backward()`` runs (default loss: the sum of the first tensor the model
    returns); gradients accumulate into the model's ``.grad`` as in any backward pass. Without
    it the forward runs under ``torch.no_grad()`` and backward sparsity is ``None``.

    Per layer: ``event_ops = input_event_ops + recurrent_event_ops`` as counted by the layer's
    [`LayerStats`][evsnn.stats.LayerStats]. Energy, in pJ (defaults `ENERGY_PJ_45NM`):
    ``dense = dense_macs · E_MAC``; ``event = input_event_ops · E_in + recurrent_event_ops · E_rec``
    where ``E_in = E_AC`` when the layer's input is binary (spikes) else ``E_MAC``, and
    ``E_rec = E_AC`` for binary spikes (ALIF) else ``E_MAC`` (graded EGRU events, deltas).
    Delta layers count all their (delta-encoded, graded) operations as MACs; a dense synaptic
    layer's operations are all input operations. A layer called several times in one forward
    gets one row per call (``name#1``, ``name#2``, ...), except a module called once per time
    step (each call one step: a snntorch-style neuron, the Linear before it), whose calls make
    one row with one entry per step.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"profile expects an nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"profile expects a torch.Tensor input, got {type(x).__name__}")
    energies = _check_energy(energy)
    source = ENERGY_SOURCE if energy_source is None else str(energy_source)
    named = list(model.named_modules())
    with_stats = {name for name, m in named if hasattr(m, "last_stats")}
    layers: dict[nn.Module, str] = {}
    synaptic: dict[nn.Module, str] = {}
    for name, m in named:
        if _inside(name, with_stats):
            continue
        if name in with_stats:
            layers[m] = name or type(m).__name__
        elif isinstance(m, _SYNAPTIC_TYPES):
            synaptic[m] = name or type(m).__name__
    skipped = {
        name or type(m).__name__: type(m).__name__
        for name, m in named
        if m not in layers and m not in synaptic and not _inside(name, with_stats) and not any(m.children())
    }
    if not layers and not synaptic:
        raise ValueError(
            f"{type(model).__name__} contains no layer that records last_stats (ALIF, EGRU, DeltaGRU, ...) "
            "and no nn.Linear or nn.Conv layer"
        )
    calls: list[tuple[nn.Module, dict[str, Any]]] = []

    def pre_hook(module: nn.Module, args: tuple) -> None:
        inp = args[0] if args else None
        info: dict[str, Any] = {"input_nnz": None, "input_binary": False}
        if isinstance(inp, Tensor):
            with torch.no_grad():
                info["input_nnz"] = int((inp != 0).sum())
                info["input_binary"] = bool(((inp == 0) | (inp == 1)).all())
            if module in synaptic:
                dense, events = synaptic_ops(module, inp)
                frac = torch.tensor([info["input_nnz"] / max(inp.numel(), 1)])
                info["stats"] = LayerStats(synaptic[module], frac, dense, events, extra={"synaptic": True})
        calls.append((module, info))

    def post_hook(module: nn.Module, args: tuple, out: Any) -> None:
        if module in synaptic:
            return
        stats = module.last_stats
        if not isinstance(stats, LayerStats):
            raise ValueError(f"layer {layers[module]!r} recorded no LayerStats; build it with record_stats=True")
        for m, info in reversed(calls):
            if m is module and "stats" not in info:
                info["stats"] = stats
                break

    if warmup:  # before the hooks: the warm-up call is not profiled
        with torch.no_grad():
            model(x)
    # Neurons that record statistics only when asked (the interop adapters) record them for this pass.
    on_request = [m for m in layers if getattr(m, "_stats_on_request", False)]
    previous = [m.record_stats for m in on_request]
    handles = []
    for m in list(layers) + list(synaptic):
        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(post_hook))
    backward_ms = None
    try:
        for m in on_request:
            m.record_stats = True
        with torch.set_grad_enabled(backward):
            _sync(x)
            t0 = time.perf_counter()
            out = model(x)
            _sync(x)
            forward_ms = 1e3 * (time.perf_counter() - t0)
        if backward:
            loss = loss_fn(out) if loss_fn is not None else _first_tensor(out).sum()
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
            t0 = time.perf_counter()
            loss.backward()
            _sync(x)
            backward_ms = 1e3 * (time.perf_counter() - t0)
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(on_request, previous):
            m.record_stats = flag

    by_module: dict[nn.Module, list[dict[str, Any]]] = {}
    for m, info in calls:
        by_module.setdefault(m, []).append(info)
    rows = []
    for m, infos in by_module.items():  # dicts keep the order of first calls
        name = layers.get(m) or synaptic[m]
        if len(infos) > 1 and all(i["stats"].event_fraction.numel() == 1 for i in infos):
            infos = [_merge_steps(infos)]
        for k, info in enumerate(infos, start=1):
            rows.append(_layer_profile(name if len(infos) == 1 else f"{name}#{k}", m, info, energies))
    return Profile(rows, energies, source, forward_ms, backward_ms, tuple(x.shape), skipped=skipped)


def _neurons(layer: nn.Module, stats: LayerStats) -> int:
    """Units per sample whose state one step updates (0 for a dense synaptic layer)."""
    if "neurons" in stats.extra:
        return int(stats.extra["neurons"])
    if stats.extra.get("synaptic"):
        return 0
    directions = 2 if getattr(layer, "bidirectional", False) else 1
    return int(getattr(layer, "hidden_size", 0)) * directions * int(getattr(layer, "num_layers", 1))


def _layer_profile(name: str, layer: nn.Module, info: dict[str, Any], energies: dict[str, float]) -> LayerProfile:
    stats: LayerStats = info["stats"]
    event_ops = int(stats.event_ops)
    family = _family(layer)
    # weight rows touched by one input/recurrent event (how LayerStats counts event ops)
    rows = None if family is None else family.gates * layer.hidden_size
    is_delta = (family is not None and family.delta_encoded) or bool(stats.extra.get("delta_encoded"))
    events_binary = (family is not None and family.binary_events) or bool(stats.extra.get("binary_events"))
    input_binary = bool(info["input_binary"]) and not is_delta
    if stats.extra.get("synaptic"):
        input_ops = event_ops  # a dense layer's every operation is driven by its input
        event_energy = event_ops * (energies["ac"] if input_binary else energies["mac"])
    elif "input_event_ops" in stats.extra and not is_delta:
        input_ops = int(stats.extra["input_event_ops"])
        e_in = energies["ac"] if input_binary else energies["mac"]
        e_rec = energies["ac"] if events_binary else energies["mac"]
        event_energy = input_ops * e_in + (event_ops - input_ops) * e_rec
    elif rows is not None and not is_delta and info["input_nnz"] is not None:
        input_ops = info["input_nnz"] * rows
        recurrent_ops = event_ops - input_ops
        if recurrent_ops < 0:
            raise RuntimeError(
                f"layer {name!r}: LayerStats.event_ops={event_ops} is below its input's {input_ops} event operations; "
                "the layer's statistics and evsnn.metrics disagree on how events are counted"
            )
        e_in = energies["ac"] if input_binary else energies["mac"]
        e_rec = energies["ac"] if events_binary else energies["mac"]
        event_energy = input_ops * e_in + recurrent_ops * e_rec
    else:
        # Delta layers (graded Δx and Δh) and unknown layers: every event operation is a MAC.
        input_ops = None
        event_energy = event_ops * energies["mac"]
    frac = stats.event_fraction.detach().float().cpu()
    return LayerProfile(
        name=name,
        kind=type(layer).__name__,
        event_fraction=float(frac.mean()) if frac.numel() else 0.0,
        event_fraction_per_step=frac.tolist(),
        dense_macs=int(stats.dense_macs),
        event_ops=event_ops,
        input_event_ops=input_ops,
        input_binary=input_binary,
        events_binary=events_binary,
        ops_saved_fraction=stats.ops_saved_fraction,
        backward_sparsity=None if stats.backward_sparsity is None else float(stats.backward_sparsity),
        input_event_fraction=None
        if stats.input_event_fraction is None
        else float(stats.input_event_fraction.float().mean()),
        dense_energy_pj=int(stats.dense_macs) * energies["mac"],
        event_energy_pj=float(event_energy),
        neurons=_neurons(layer, stats),
    )


class LayerTraces(NamedTuple):
    """What `reference_traces` returns, all time-first ``[T, B, ...]``.

    - ``output``: what the layer returns (spikes, EGRU events ``y``, hidden states ``h``);
    - ``events``: what counts as an event (spikes, ``y``, the hidden deltas ``Δh``);
    - ``trace``: [`ALIFTrace`][evsnn.functional.ALIFTrace], [`EGRUTrace`][evsnn.functional.EGRUTrace]
      or [`DeltaTrace`][evsnn.functional.DeltaTrace];
    - ``threshold``: EGRU θ ``[H]``; ALIF ``B_t`` (= ``trace.threshold``); delta ``theta_h``.
    """

    output: Tensor
    events: Tensor
    trace: ALIFTrace | EGRUTrace | DeltaTrace
    threshold: Tensor | float
    final_state: Any


def reference_traces(layer: nn.Module, x: Tensor, state: Any = None) -> LayerTraces:
    """Replay ``layer`` on ``x`` with the reference scan of [`evsnn.functional`][evsnn.functional] and keep
    its internal traces (ALIF ``v`` and ``B_t``, EGRU ``c``, delta ``Δx``/``Δh``).

    ``x`` is laid out as the layer expects (``batch_first`` honoured); the returned tensors are
    time-first. The graph is kept when grad mode is on, so the traces can feed a regulariser.
    EGRU zoneout/DropConnect sample randomly in training, so an EGRU using them must be in
    ``eval()`` mode to be replayed.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"reference_traces expects a torch.Tensor input, got {type(x).__name__}")
    if not isinstance(layer, (ALIF, EGRU, DeltaGRU, DeltaLSTM)):
        raise TypeError(
            f"reference_traces expects an ALIF, EGRU, DeltaGRU or DeltaLSTM layer, got {type(layer).__name__}"
        )
    if x.dim() != 3 or x.shape[-1] != layer.input_size:
        raise ValueError(
            f"{type(layer).__name__} expects input [T, B, {layer.input_size}] "
            f"(or [B, T, {layer.input_size}] with batch_first), got {tuple(x.shape)}"
        )
    if layer.batch_first:
        x = x.transpose(0, 1)
    if isinstance(layer, ALIF) and state is not None and not isinstance(state, ALIFState):
        raise TypeError(f"an ALIF state must be an ALIFState, got {type(state).__name__}")
    # the layer's [1, B, ...] state (or the [B, ...] form) as the scan's; final_state stays [B, ...]
    state = single_direction_state(layer, state, x.shape[1], x, "reference_traces")
    if isinstance(layer, EGRU) and layer.training and (layer.zoneout > 0.0 or layer.dropconnect > 0.0):
        raise ValueError(
            "this EGRU samples zoneout/DropConnect masks in training, which a replay cannot reproduce; "
            "call layer.eval() first"
        )
    # the layer's own call of its scan (layer 0, forward), with the family's reference scan
    output, final, trace, _ = layer._scan_direction("", x, state, layer.neuron_family.reference)
    events, threshold = layer._replay_view(output, trace)
    return LayerTraces(output, events, trace, threshold, final)
