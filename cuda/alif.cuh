// The ALIF equations (SPEC.md §2), forward step and adjoint, one __device__ function each, used by
// every kernel of alif.cu. alif.cu is compiled with --fmad=false: each operation below rounds on its
// own, in the order of the PyTorch reference (evsnn/functional/alif.py), so the kernels reproduce
// its results bit for bit; keep that order when editing.
// Compiled with -Dscalar_t=float|double; included by alif.cu after common.cuh.
#pragma once

#ifndef scalar_t
#error "scalar_t must be defined (-Dscalar_t=float or -Dscalar_t=double)"
#endif

// B_t = b0 + beta * b_t, the adaptive threshold.
__device__ __forceinline__ scalar_t alif_threshold(scalar_t b0, scalar_t beta, scalar_t b) { return b0 + beta * b; }

// One forward step of one neuron: (v, b, s) of step t-1 in, of step t out, B_t in `threshold`.
__device__ __forceinline__ void alif_step(scalar_t i_t, scalar_t alpha, scalar_t one_m_alpha, scalar_t rho,
                                          scalar_t one_m_rho, scalar_t b0, scalar_t beta, scalar_t& v, scalar_t& b,
                                          scalar_t& s, scalar_t& threshold) {
    b = rho * b + one_m_rho * s;
    threshold = alif_threshold(b0, beta, b);
    v = alpha * v + one_m_alpha * i_t - threshold * s;
    s = (v - threshold) > scalar_t(0) ? scalar_t(1) : scalar_t(0);
}

// One reverse step of the adjoint of alif_step, for one neuron at step t. Returns dL/dI_t.
//   g        the surrogate pseudo-derivative g(v_t - B_t)
//   g_s      dL/ds_t of the spike output; g_v and g_thr: dL/dv_t and dL/dB_t of the traces
//            (a recurrent kernel adds W_hh^T dI_{t+1} to the carry Gs before the call: that order of sums)
//   thr, b_t B_t and b_t of step t;  v_p, b_p, s_p the state of step t-1;  i_t the input current
// Carries Gv, Gb, Gs: the adjoints of v_t, b_t, s_t coming from step t+1 in, those of step t-1 out.
// Partials p_alpha, p_rho, p_b0, p_beta: this step's parameter gradient contributions are added.
//   gs = Gs + g_s            dx = gs * g
//   gv = Gv + dx + g_v       gB = g_thr - dx - gv*s_{t-1}      gb = Gb + beta*gB
//   dI_t = (1-alpha)*gv      dalpha += gv*(v_{t-1} - I_t)      drho += gb*(b_{t-1} - s_{t-1})
//   db0 += gB                dbeta += gB*b_t
//   Gv <- alpha*gv           Gb <- rho*gb                      Gs <- (1-rho)*gb - gv*B_t
__device__ __forceinline__ scalar_t alif_adjoint_step(scalar_t g, scalar_t g_s, scalar_t g_v, scalar_t g_thr,
                                                      scalar_t alpha, scalar_t rho, scalar_t beta, scalar_t thr,
                                                      scalar_t b_t, scalar_t v_p, scalar_t b_p, scalar_t s_p,
                                                      scalar_t i_t, scalar_t& Gv, scalar_t& Gb, scalar_t& Gs,
                                                      scalar_t& p_alpha, scalar_t& p_rho, scalar_t& p_b0,
                                                      scalar_t& p_beta) {
    const scalar_t gs = Gs + g_s;
    const scalar_t dx = gs * g;
    const scalar_t gv = Gv + dx + g_v;
    const scalar_t gB = g_thr - dx - gv * s_p;
    const scalar_t gb = Gb + beta * gB;
    p_alpha += gv * (v_p - i_t);
    p_rho += gb * (b_p - s_p);
    p_b0 += gB;
    p_beta += gB * b_t;
    Gv = alpha * gv;
    Gb = rho * gb;
    Gs = (scalar_t(1) - rho) * gb - gv * thr;
    return (scalar_t(1) - alpha) * gv;
}
