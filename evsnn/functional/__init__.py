"""The math of SPEC.md as pure functions: NamedTuple states, one-step functions and reference
scans. No ``nn.Module`` and no backend logic; every accelerated backend is tested against these."""

from .alif import (
    ALIFState,
    ALIFTrace,
    alif_dynamics,
    alif_initial_state,
    alif_scan,
    alif_step,
    decay,
    leaky_readout_scan,
    leaky_readout_step,
)
from .delta import (
    DELTA_RULES,
    DeltaGRUState,
    DeltaLSTMState,
    DeltaTrace,
    delta_encode,
    delta_gru_gates,
    delta_gru_initial_state,
    delta_gru_scan,
    delta_gru_step,
    delta_lstm_gates,
    delta_lstm_initial_state,
    delta_lstm_scan,
    delta_lstm_step,
)
from .egru import EGRUState, EGRUTrace, egru_initial_state, egru_pointwise, egru_scan, egru_step
from .fixed_point import quantize_fixed_point

__all__ = [
    "ALIFState",
    "ALIFTrace",
    "alif_dynamics",
    "alif_initial_state",
    "alif_scan",
    "alif_step",
    "decay",
    "leaky_readout_scan",
    "leaky_readout_step",
    "DELTA_RULES",
    "quantize_fixed_point",
    "DeltaGRUState",
    "DeltaLSTMState",
    "DeltaTrace",
    "delta_encode",
    "delta_gru_gates",
    "delta_lstm_gates",
    "delta_gru_initial_state",
    "delta_gru_scan",
    "delta_gru_step",
    "delta_lstm_initial_state",
    "delta_lstm_scan",
    "delta_lstm_step",
    "EGRUState",
    "EGRUTrace",
    "egru_initial_state",
    "egru_pointwise",
    "egru_scan",
    "egru_step",
]
