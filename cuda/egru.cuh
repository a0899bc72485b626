// The EGRU equations (SPEC.md §3), forward step and adjoint, one __device__ function each, used by
// the kernels of egru.cu. Gate order r, z, n as torch.nn.GRU; reset_threshold selects the official
// code's reset (c = c̃ − o·θ) over the paper's output reset (c̃ includes −y_{t−1}).
// Compiled with -Dscalar_t=float|double; included by egru.cu after common.cuh.
#pragma once

#ifndef scalar_t
#error "scalar_t must be defined (-Dscalar_t=float or -Dscalar_t=double)"
#endif

// Whether ∂L/∂y_t can reach the loss for x = c̃_t − θ: an event (o_t = 1), or inside the surrogate's
// support (|x| < support; g(x) = 0 outside it). Elsewhere ∂L/∂y_t is multiplied by exactly 0 (sparse BPTT).
__device__ __forceinline__ bool egru_in_support(scalar_t x, scalar_t support) {
    return x > scalar_t(0) || fabs(x) < support;
}

// The state c_t kept after the event test of the candidate p = c̃_t.
__device__ __forceinline__ scalar_t egru_reset(scalar_t p, scalar_t th, int reset_threshold) {
    return (reset_threshold && p - th > scalar_t(0)) ? p - th : p;
}

// One forward step of unit k of one sample.
//   gr, gz, gn   W_i{r,z,n} x_t + b_i{r,z,n};  hr, hz, hn  W_h{r,z,n} y_{t−1};  br, bz, bn  b_h{r,z,n}
//   cprev, yprev c_{t−1}, y_{t−1} of the unit;  th  its threshold θ
// Out: r, z, n the gates, hnb = W_hn y_{t−1} + b_hn, p the candidate c̃_t, y the event output, c the state c_t.
__device__ __forceinline__ void egru_step(scalar_t gr, scalar_t gz, scalar_t gn, scalar_t hr, scalar_t hz, scalar_t hn,
                                          scalar_t br, scalar_t bz, scalar_t bn, scalar_t cprev, scalar_t yprev,
                                          scalar_t th, int reset_threshold, scalar_t& r, scalar_t& z, scalar_t& n,
                                          scalar_t& hnb, scalar_t& p, scalar_t& y, scalar_t& c) {
    r = evsnn_sigmoid(gr + (hr + br));
    z = evsnn_sigmoid(gz + (hz + bz));
    hnb = hn + bn;
    n = tanh(gn + r * hnb);
    p = z * cprev + (scalar_t(1) - z) * n;
    if (!reset_threshold) p -= yprev;
    const bool o = p - th > scalar_t(0);
    y = o ? p : scalar_t(0);
    c = egru_reset(p, th, reset_threshold);
}

// The adjoint of egru_step for one unit at step t.
//   Y      ∂L/∂y_t (outputs, W_hhᵀ δh_{t+1} where needed, and −∂L/∂c̃_{t+1} for the output reset)
//   C      ∂L/∂c_t carried from step t+1;  g  the surrogate g(c̃_t − θ)
//   r, z, n, hn, p  the forward's saved gates, W_hn y_{t−1} + b_hn and c̃_t;  cprev  c_{t−1}
// Out: dar, daz, dan the gate pre-activation gradients (W_hn's is dan·r), dp = ∂L/∂c̃_t,
//      dth this step's ∂L/∂θ, dc = ∂L/∂c_{t−1}.
__device__ __forceinline__ void egru_adjoint_step(scalar_t Y, scalar_t C, scalar_t g, scalar_t r, scalar_t z,
                                                  scalar_t n, scalar_t hn, scalar_t p, scalar_t th, scalar_t cprev,
                                                  int reset_threshold, scalar_t& dar, scalar_t& daz, scalar_t& dan,
                                                  scalar_t& dp, scalar_t& dth, scalar_t& dc) {
    const scalar_t o = p - th > scalar_t(0) ? scalar_t(1) : scalar_t(0);
    dp = Y * (o + p * g);
    dth = -Y * p * g;
    if (reset_threshold) {
        dp += C * (scalar_t(1) - th * g);
        dth += C * (th * g - o);
    } else {
        dp += C;
    }
    const scalar_t dz = dp * (cprev - n);
    const scalar_t dn = dp * (scalar_t(1) - z);
    daz = dz * z * (scalar_t(1) - z);
    dan = dn * (scalar_t(1) - n * n);
    dar = dan * hn * r * (scalar_t(1) - r);
    dc = dp * z;
}
