// The delta-cell equations (SPEC.md §4), one __device__ function each, used by the kernels of
// delta.cu: the delta encoder, the DeltaGRU and DeltaLSTM steps from their accumulators, the
// adjoints of those steps, and the accumulator slot layout they read.
// Compiled with -Dscalar_t=float|double; included by delta.cu after common.cuh.
#pragma once

#ifndef scalar_t
#error "scalar_t must be defined (-Dscalar_t=float or -Dscalar_t=double)"
#endif

// The delta of a difference against its threshold (SPEC §4): strict keeps it unless |diff| <= theta,
// inclusive (the official DeltaRNN rule |diff| >= theta) unless |diff| < theta or diff == 0. Both are
// written as "drop if" so a NaN difference is kept, as the reference's diff * mask = NaN is.
__device__ __forceinline__ scalar_t delta_pass(scalar_t diff, scalar_t theta, int inclusive) {
    const scalar_t a = fabs(diff);
    const bool drop = inclusive ? (a < theta || diff == scalar_t(0)) : (a <= theta);
    return drop ? scalar_t(0) : diff;
}

// One step of the delta encoder: the delta of `value` against its memory, which it then updates
// (x̂_t = x̂_{t-1} + Δx_t). Returns the delta.
__device__ __forceinline__ scalar_t delta_encode(scalar_t value, scalar_t& memory, scalar_t theta, int inclusive) {
    const scalar_t d = delta_pass(value - memory, theta, inclusive);
    memory = memory + d;
    return d;
}

// The accumulator slots of a unit (M [.., 4] unit-major; the host packs the weights to match).
// GRU: r, z and the n gate's input and hidden parts apart; LSTM: the gates i, f, g, o.
#define DELTA_GRU_R 0
#define DELTA_GRU_Z 1
#define DELTA_GRU_NX 2
#define DELTA_GRU_NH 3
#define DELTA_LSTM_I 0
#define DELTA_LSTM_F 1
#define DELTA_LSTM_G 2
#define DELTA_LSTM_O 3

// DeltaGRU gates from the accumulators: r = σ(M_r), z = σ(M_z), n = tanh(M_nx + r ⊙ M_nh).
__device__ __forceinline__ void delta_gru_gates(const scalar_t (&m)[4], scalar_t& r, scalar_t& z, scalar_t& n) {
    r = evsnn_sigmoid(m[DELTA_GRU_R]);
    z = evsnn_sigmoid(m[DELTA_GRU_Z]);
    n = tanh(m[DELTA_GRU_NX] + r * m[DELTA_GRU_NH]);
}

// DeltaGRU step: h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}.
__device__ __forceinline__ scalar_t delta_gru_step(const scalar_t (&m)[4], scalar_t hprev) {
    scalar_t r, z, n;
    delta_gru_gates(m, r, z, n);
    return (scalar_t(1) - z) * n + z * hprev;
}

// The adjoint of delta_gru_step: from lh = ∂L/∂h_t, the accumulators' gradients g (slot order) and
// the return value, the direct part of ∂L/∂h_{t−1} (its delta-encoder path is added by the caller).
__device__ __forceinline__ scalar_t delta_gru_adjoint(const scalar_t (&m)[4], scalar_t hprev, scalar_t lh,
                                                      scalar_t (&g)[4]) {
    scalar_t r, z, n;
    delta_gru_gates(m, r, z, n);
    const scalar_t ga = lh * (scalar_t(1) - z) * (scalar_t(1) - n * n);
    g[DELTA_GRU_R] = ga * m[DELTA_GRU_NH] * r * (scalar_t(1) - r);
    g[DELTA_GRU_Z] = lh * (hprev - n) * z * (scalar_t(1) - z);
    g[DELTA_GRU_NX] = ga;
    g[DELTA_GRU_NH] = ga * r;
    return lh * z;
}

// DeltaLSTM gates from the accumulator: i, f, o = σ(M_i, M_f, M_o), g = tanh(M_g).
__device__ __forceinline__ void delta_lstm_gates(const scalar_t (&m)[4], scalar_t& ig, scalar_t& fg, scalar_t& gg,
                                                 scalar_t& og) {
    ig = evsnn_sigmoid(m[DELTA_LSTM_I]);
    fg = evsnn_sigmoid(m[DELTA_LSTM_F]);
    gg = tanh(m[DELTA_LSTM_G]);
    og = evsnn_sigmoid(m[DELTA_LSTM_O]);
}

// DeltaLSTM step: c_t = f ⊙ c_{t−1} + i ⊙ g (into c), returns h_t = o ⊙ tanh(c_t).
__device__ __forceinline__ scalar_t delta_lstm_step(const scalar_t (&m)[4], scalar_t cprev, scalar_t& c) {
    scalar_t ig, fg, gg, og;
    delta_lstm_gates(m, ig, fg, gg, og);
    c = fg * cprev + ig * gg;
    return og * tanh(c);
}

// The adjoint of delta_lstm_step: from lh = ∂L/∂h_t and lam_c = ∂L/∂c_t carried from step t+1, the
// accumulator's gradients g (slot order); lam_c becomes ∂L/∂c_{t−1}.
__device__ __forceinline__ void delta_lstm_adjoint(const scalar_t (&m)[4], scalar_t c, scalar_t cprev, scalar_t lh,
                                                   scalar_t& lam_c, scalar_t (&g)[4]) {
    scalar_t ig, fg, gg, og;
    delta_lstm_gates(m, ig, fg, gg, og);
    const scalar_t tc = tanh(c);
    const scalar_t gc = lam_c + lh * og * (scalar_t(1) - tc * tc);
    g[DELTA_LSTM_I] = gc * gg * ig * (scalar_t(1) - ig);
    g[DELTA_LSTM_F] = gc * cprev * fg * (scalar_t(1) - fg);
    g[DELTA_LSTM_G] = gc * ig * (scalar_t(1) - gg * gg);
    g[DELTA_LSTM_O] = lh * tc * og * (scalar_t(1) - og);
    lam_c = gc * fg;
}
