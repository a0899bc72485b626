"""Streaming inference: feed a layer one step (or one chunk) at a time and keep its state.

    stream = Stream(layer)            # any evsnn layer or cell, batch_size=1 by default
    for x_t in source:                # x_t: [B, input_size]
        y_t = stream.step(x_t)        # [B, hidden_size]
    y = stream.chunk(x)               # [T, B, input_size] (layout of the layer) -> [T, B, hidden]
    stream.reset()                    # back to the initial state

Everything runs under ``torch.inference_mode``: no autograd graph is recorded and the state
lives in a fixed set of tensors replaced step by step, so memory stays bounded over
arbitrarily long streams. Results equal the layer's own ``forward`` over the concatenated
steps (the state carries across calls), in evaluation semantics (zoneout uses its
expectation; DropConnect is off).

The backend is chosen like the layer's (``"auto"``, ``EVSNN_BACKEND``): where the
``"cpu_event"`` backend applies, the stream uses its prepared stepper (weights transposed
once, only the rows of active units read each step; with numba installed one fused call per
step or chunk, see ``evsnn.ops.egru.cpu`` & co.); otherwise it calls the chosen backend's scan on
each step or chunk. :meth:`Stream.chunk` is the fast way when inputs arrive in blocks: the
input projection is one GEMM for the block instead of one matrix-vector product per step.

Weights are read when the stream is built. A stream notices when the layer's parameters,
buffers or thresholds change afterwards (in place, e.g. an optimiser step, or replaced): its
next ``step``/``chunk`` raises instead of mixing old and new weights. Call :meth:`refresh` to
read them again (``refresh(keep_state=True)`` continues from the current state). Tensors returned by a stream are inference tensors (see
``torch.inference_mode``): clone them outside inference mode before using them in autograd.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .functional.alif import alif_initial_state, leaky_readout_step
from .functional.delta import delta_gru_initial_state, delta_lstm_initial_state
from .functional.egru import egru_initial_state
from .nn._checks import check_input, check_size, check_state
from .nn._validate import check_steps, check_tensor_state
from .nn.alif import ALIF, ALIFCell, LeakyReadout
from .nn.delta import DeltaGRU, DeltaGRUCell, DeltaLSTM, DeltaLSTMCell
from .nn.egru import EGRU, EGRUCell
from .ops import dispatch

__all__ = ["Stream", "SUPPORTED_LAYERS"]

SUPPORTED_LAYERS = (ALIF, ALIFCell, LeakyReadout, EGRU, EGRUCell, DeltaGRU, DeltaGRUCell, DeltaLSTM, DeltaLSTMCell)

_FAMILY = {
    ALIF: "alif",
    ALIFCell: "alif",
    EGRU: "egru",
    EGRUCell: "egru",
    DeltaGRU: "delta_gru",
    DeltaGRUCell: "delta_gru",
    DeltaLSTM: "delta_lstm",
    DeltaLSTMCell: "delta_lstm",
}


def _family_of(layer: nn.Module) -> str | None:
    for cls in type(layer).__mro__:
        if cls in _FAMILY:
            return _FAMILY[cls]
    return None


class Stream:
    """Stateful online inference over one evsnn layer or cell (see the module docstring).

    ``Stream(layer, batch_size=1, backend=None)``; ``backend=None`` uses the layer's own
    ``backend`` setting. ``step(x_t [B, I]) -> [B, H]``, ``chunk(x) -> outputs of all steps``,
    ``reset(state=None)``, :attr:`state` (a copy of the current state NamedTuple, or the
    readout's ``m`` tensor), :attr:`backend` (the backend actually used).
    """

    def __init__(self, layer: nn.Module, *, batch_size: int = 1, backend: str | None = None):
        if not isinstance(layer, SUPPORTED_LAYERS):
            names = ", ".join(c.__name__ for c in SUPPORTED_LAYERS)
            raise TypeError(f"Stream expects an evsnn layer or cell ({names}), got {type(layer).__name__}")
        if getattr(layer, "num_layers", 1) != 1 or getattr(layer, "bidirectional", False):
            raise ValueError(
                f"Stream runs one layer forward in time; got {type(layer).__name__} with num_layers="
                f"{layer.num_layers}, bidirectional={layer.bidirectional} (a reverse direction needs the whole sequence)"
            )
        self.layer = layer
        self.batch_size = check_size("batch_size", batch_size)
        self.family = _family_of(layer)
        requested = getattr(layer, "backend", "torch") if backend is None else backend
        self.requested = dispatch.validate_backend(requested)
        self._like = layer.linear.weight if isinstance(layer, LeakyReadout) else layer.weight_ih
        self.refresh()

    # ---------------------------------------------------------------------------------------
    # setup
    # ---------------------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        layer = self.layer
        return layer.output_size if isinstance(layer, LeakyReadout) else layer.hidden_size

    @property
    def input_size(self) -> int:
        return self.layer.input_size

    def _config(self) -> dict[str, Any]:
        layer = self.layer
        config: dict[str, Any] = {
            "device": self._like.device,
            "dtype": self._like.dtype,
            "shape": (1, self.batch_size, self.hidden_size),
        }
        if self.family == "egru":
            config.update(surrogate=layer.surrogate, reset=layer.reset, zoneout=getattr(layer, "zoneout", 0.0))
        elif self.family == "alif":
            config.update(surrogate=layer.surrogate, recurrent=layer.recurrent)
        else:
            config.update(
                theta_x=layer.theta_x, theta_h=layer.theta_h, delta_rule=layer.delta_rule, fixed_point=layer.fixed_point
            )
        return config

    def refresh(self, keep_state: bool = False) -> None:
        """Re-read the layer's weights and choose the backend again. The state is reset, or with
        ``keep_state=True`` carried over (the stream continues with the new weights)."""
        state = self.state if keep_state else None
        with torch.inference_mode():
            self._runner = None
            self._backend = None
            if self.family is None:  # LeakyReadout: elementwise after one linear map
                self.backend = "torch"
                self._alpha_tau = self.layer.tau.detach().clone()
            else:
                # dispatch tells the backend's check whether "auto" is choosing: an explicit
                # "cpu_event" only needs the event path to be able to run.
                config = self._config()
                chosen = dispatch.resolve(self.family, self.requested, **config)
                self.backend = chosen.name
                if chosen.name == "cpu_event":
                    self._runner = self._make_runner()
                else:
                    self._backend = chosen
                    self._snapshot = self._reference_args()
        self._watch()
        self.reset(state)

    # What the stream read: every parameter and buffer of the layer (the dict it sits in, the
    # tensor object, its version counter, bumped by every in-place write) and the scalar
    # options the backends were prepared with. Comparing them costs a few hundred ns per tensor.
    _OPTIONS = (
        "theta_x", "theta_h", "reset", "zoneout", "recurrent", "delta_rule", "fixed_point", "weight_fixed_point",
    )  # fmt: skip

    def _watch(self) -> None:
        watched = []
        for prefix, module in self.layer.named_modules():
            for table in (module._parameters, module._buffers):
                for name, t in table.items():
                    if t is not None:
                        version = None if t.is_inference() else t._version
                        watched.append((table, name, t, version, f"{prefix}.{name}" if prefix else name))
        self._watched = watched
        options = self.layer.__dict__
        self._options = tuple((name, options[name]) for name in self._OPTIONS if name in options)

    def _check_unchanged(self) -> None:
        # A plain loop with an early exit: this runs before every step.
        options = self.layer.__dict__
        for table, name, t, version, _ in self._watched:
            if table.get(name) is not t or (version is not None and t._version != version):
                break
        else:
            for name, value in self._options:
                if options.get(name) != value:
                    break
            else:
                return
        changed = [
            label
            for table, name, t, version, label in self._watched
            if table.get(name) is not t or (version is not None and t._version != version)
        ]
        changed += [name for name, value in self._options if options.get(name) != value]
        if changed:
            raise RuntimeError(
                f"Stream({type(self.layer).__name__}): the layer's {', '.join(changed)} changed since the stream "
                "read them; call stream.refresh() to read them again (the state is reset) or "
                "stream.refresh(keep_state=True) to continue from the current state with the new values"
            )

    def _make_runner(self):
        from .ops.alif import cpu as alif_cpu
        from .ops.delta import cpu as delta_cpu
        from .ops.egru import cpu as egru_cpu

        layer = self.layer
        if self.family == "egru":
            return egru_cpu.EGRURunner(
                layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh, layer.threshold, reset=layer.reset
            )
        if self.family == "alif":
            return alif_cpu.ALIFRunner(
                tau_mem=layer.tau_mem,
                tau_adapt=layer.tau_adapt,
                b0=layer.b0,
                beta=layer.beta,
                weight_hh=layer.weight_hh,
                bias_hh=layer.bias_hh,
            )
        runner_type = delta_cpu.DeltaGRURunner if self.family == "delta_gru" else delta_cpu.DeltaLSTMRunner
        return runner_type(
            layer._weight("weight_ih"),  # rounded as the layer's products use it (weight_fixed_point)
            layer._weight("weight_hh"),
            layer.bias_ih,
            layer.bias_hh,
            theta_x=layer.theta_x,
            theta_h=layer.theta_h,
            delta_rule=layer.delta_rule,
        )

    def _reference_args(self) -> tuple[tuple, dict]:
        layer = self.layer
        if self.family == "egru":
            kwargs = {"reset": layer.reset, "surrogate": layer.surrogate}
            zoneout = getattr(layer, "zoneout", 0.0)
            if zoneout > 0.0:
                kwargs.update(zoneout=zoneout, training=False)
            args = (layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh, layer.threshold.detach())
            return args, kwargs
        if self.family == "alif":
            kwargs = {
                "tau_mem": layer.tau_mem,
                "tau_adapt": layer.tau_adapt,
                "b0": layer.b0,
                "beta": layer.beta,
                "surrogate": layer.surrogate,
                "weight_hh": layer.weight_hh,
                "bias_hh": layer.bias_hh,
            }
            return (), kwargs
        args = (layer._weight("weight_ih"), layer._weight("weight_hh"), layer.bias_ih, layer.bias_hh)
        return args, layer._scan_options()

    def _initial_state(self):
        layer, batch, like = self.layer, self.batch_size, self._like
        if self.family is None:
            return like.new_zeros(batch, layer.output_size)
        if self.family == "egru":
            return egru_initial_state(batch, layer.hidden_size, like)
        if self.family == "alif":
            return alif_initial_state(like.new_zeros(batch, layer.hidden_size), layer.b0)
        init = delta_gru_initial_state if self.family == "delta_gru" else delta_lstm_initial_state
        return init(batch, layer.input_size, layer.hidden_size, layer.bias_ih, layer.bias_hh, like)

    def reset(self, state: NamedTuple | Tensor | None = None) -> None:
        """Back to the layer's initial state, or to ``state`` (checked like the layer's)."""
        with torch.inference_mode():
            if state is None:
                state = self._initial_state()
            elif self.family is None:
                reference = self._initial_state()
                check_tensor_state(
                    f"Stream({type(self.layer).__name__})", state, tuple(reference.shape), reference.dtype, reference.device
                )
            else:
                reference = self._initial_state()
                state = check_state(
                    f"Stream({type(self.layer).__name__})",
                    state,
                    type(reference),
                    [tuple(t.shape) for t in reference],
                    self._like,
                )
            if self._runner is not None:
                self._runner.load(state)
                self._state = None
            else:
                self._state = tuple(t.clone() for t in state) if self.family else state.clone()
                if self.family:
                    self._state = type(state)(*self._state)

    @property
    def state(self):
        """A copy of the current state (``ALIFState``/``EGRUState``/``Delta*State``, or ``m``)."""
        with torch.inference_mode():
            if self._runner is not None:
                return self._runner.state()
            if self.family is None:
                return self._state.clone()
            return type(self._state)(*(t.clone() for t in self._state))

    # ---------------------------------------------------------------------------------------
    # running
    # ---------------------------------------------------------------------------------------

    def _check_step_input(self, x: Any) -> None:
        name = f"Stream({type(self.layer).__name__}).step"
        check_input(name, x, 2, self.input_size, self._like)
        if x.shape[0] != self.batch_size:
            raise ValueError(f"{name} expects batch size {self.batch_size} (set by Stream(batch_size=...)), got {x.shape[0]}")

    def step(self, x: Tensor) -> Tensor:
        """Advance one step on ``x [B, input_size]``; returns the layer's output ``[B, H]``."""
        self._check_step_input(x)
        self._check_unchanged()
        with torch.inference_mode():
            layer, runner = self.layer, self._runner
            if runner is not None:
                if self.family == "egru":
                    out = runner.step(runner.project(x))[0]
                elif self.family == "alif":
                    out = runner.step(nn.functional.linear(x, layer.weight_ih, layer.bias_ih))[0]
                else:
                    out = runner.step(x)
                # the runners compute a bf16/fp16 layer in float32 (SPEC §6); outputs in the
                # layer's dtype, as its forward and the reference path give them
                return out.to(self._like.dtype)
            return self._reference_chunk(x.unsqueeze(0))[0]

    def chunk(self, x: Tensor) -> Tensor:
        """Advance over all steps of ``x`` (``[T, B, I]``, or ``[B, T, I]`` for a layer built
        with ``batch_first=True``); returns all outputs in the same layout."""
        batch_first = bool(getattr(self.layer, "batch_first", False))
        name = f"Stream({type(self.layer).__name__}).chunk"
        check_input(name, x, 3, self.input_size, self._like)
        x = x.transpose(0, 1) if batch_first else x
        check_steps(name, x)
        self._check_unchanged()
        if x.shape[1] != self.batch_size:
            raise ValueError(f"{name} expects batch size {self.batch_size} (set by Stream(batch_size=...)), got {x.shape[1]}")
        with torch.inference_mode():
            runner = self._runner
            if runner is not None:
                if self.family == "alif":
                    out = runner.run(nn.functional.linear(x, self.layer.weight_ih, self.layer.bias_ih))[0]
                else:
                    out = runner.run(x)[0]
                out = out.to(self._like.dtype)
            else:
                out = self._reference_chunk(x)
        return out.transpose(0, 1) if batch_first else out

    def _reference_chunk(self, x: Tensor) -> Tensor:
        layer = self.layer
        if self.family is None:
            current = layer.linear(x)
            m = self._state
            outs = []
            for t in range(current.shape[0]):
                m = leaky_readout_step(current[t], m, tau=self._alpha_tau)
                outs.append(m)
            self._state = m
            return torch.stack(outs)
        args, kwargs = self._snapshot
        if self.family == "alif":
            current = nn.functional.linear(x, layer.weight_ih, layer.bias_ih)
            out, self._state, _ = self._backend.fn(current, self._state, **kwargs)
        else:
            out, self._state, _ = self._backend.fn(x, self._state, *args, **kwargs)
        return out
