// ALIF (SPEC.md §2) on the GPU: fused multi-step forward and reverse-time backward kernels.
//
// Per neuron n of sample b, with alpha = exp(-1/tau_m), rho = exp(-1/tau_adp) computed by torch:
//   b_t = rho*b_{t-1} + (1-rho)*s_{t-1}
//   B_t = b0 + beta*b_t
//   v_t = alpha*v_{t-1} + (1-alpha)*I_t - B_t*s_{t-1}
//   s_t = H(v_t - B_t)
// and, for the recurrent layer, I_t = current_t + (W_hh s_{t-1} + b_hh).
//
// Compiled with --fmad=false and the operations in the order of the PyTorch reference
// (evsnn/functional/alif.py), so the feed-forward kernel reproduces the reference's rounding
// step by step (the spikes are then identical, not merely close).
//
// Layouts: sequences [T, B, N], states [B, N], per-neuron parameters [N], all contiguous.
// wt is W_hh transposed ([N_in, N_out], wt[j*N + n] = W_hh[n, j]) so that the columns of
// W_hh that a spiking unit j needs (forward) and the rows of W_hh^T a unit inside the
// surrogate's support needs (backward) are both one contiguous row of wt: coalesced.
//
// The step (alif_step) and its adjoint (alif_adjoint_step, reverse time, per (b, n), with carried
// adjoints Gv, Gb, Gs of v_t, b_t, s_t; the recurrent layer adds W_hh^T dI_{t+1} to Gs) are the
// __device__ functions of alif.cuh, shared by every kernel here.
// Parameter gradients are written as per-(b, n) partial sums over time (each by one thread,
// in a fixed order) and reduced over the batch by torch: deterministic, no atomics.
#include "common.cuh"
#include "alif.cuh"

#ifndef ALIF_REC_THREADS
#define ALIF_REC_THREADS 128
#endif
#define ALIF_REC_WARPS (ALIF_REC_THREADS / 32)
// Spike columns gathered per tile of the forward recurrent product (per warp: 4 ballots of 32).
#define ALIF_TILE_PER_WARP 128
#define ALIF_TILE (ALIF_REC_WARPS * ALIF_TILE_PER_WARP)
// Backward: a chunk with at most this many units inside the surrogate's support computes their
// rows of W_hh^T d one warp per unit (alif_rec_dot_rows); above it, the whole chunk at once with
// coalesced loads of W_hh (alif_rec_dot_cols), which is faster when most units need it.
#define ALIF_SPARSE_ROWS 8
#define ALIF_DOT_TILE 1024
#if ALIF_REC_THREADS != 128
#error "alif_rec_dot_cols assumes 4 warps of 32 lanes x 4 units per lane = 128 units per chunk"
#endif

typedef long long idx_t;

#define SG_ARGS const int sg_kind, const scalar_t sg0, const scalar_t sg1, const scalar_t sg2, const scalar_t sg3, const scalar_t sg_trunc
#define SG_G(x) evsnn_surrogate_grad(sg_kind, sg0, sg1, sg2, sg3, sg_trunc, (x))

// The state (v, b, s) of step t-1 that the adjoint of step t reads, for the (sample, neuron) at
// `sidx` of a state [B, N] whose step-t element of a sequence [T, B, N] is at `off` (BN = B*N):
// the traces of step t-1, or the initial state at t = 0. Used by every backward kernel.
__device__ __forceinline__ void alif_previous_state(const scalar_t* __restrict__ v_trace,
                                                    const scalar_t* __restrict__ b_trace,
                                                    const scalar_t* __restrict__ spikes, const scalar_t* __restrict__ v0,
                                                    const scalar_t* __restrict__ bstate0,
                                                    const scalar_t* __restrict__ s0, const int t, const idx_t off,
                                                    const idx_t BN, const idx_t sidx, scalar_t& v_p, scalar_t& b_p,
                                                    scalar_t& s_p) {
    if (t > 0) {
        v_p = v_trace[off - BN];
        b_p = b_trace[off - BN];
        s_p = spikes[off - BN];
    } else {
        v_p = v0[sidx];
        b_p = bstate0[sidx];
        s_p = s0[sidx];
    }
}

// ---------------------------------------------------------------------------------------------
// Feed-forward: one thread per (b, n), the state in registers, a loop over all T steps.
// b_trace may be null (no backward will follow): it is then not written.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void alif_ff_forward(const scalar_t* __restrict__ current, const scalar_t* __restrict__ v0,
                                           const scalar_t* __restrict__ bstate0, const scalar_t* __restrict__ s0,
                                           const scalar_t* __restrict__ alpha, const scalar_t* __restrict__ rho,
                                           const scalar_t* __restrict__ b0, const scalar_t* __restrict__ beta,
                                           scalar_t* __restrict__ spikes, scalar_t* __restrict__ v_trace,
                                           scalar_t* __restrict__ b_trace, scalar_t* __restrict__ thr_trace,
                                           scalar_t* __restrict__ v_out, scalar_t* __restrict__ b_out,
                                           scalar_t* __restrict__ s_out, const int T, const int B, const int N) {
    const idx_t BN = (idx_t)B * N;
    const idx_t idx = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= BN) return;
    const int n = (int)(idx % N);
    const scalar_t a = alpha[n], r = rho[n], th0 = b0[n], bt = beta[n];
    const scalar_t one_m_a = scalar_t(1) - a, one_m_r = scalar_t(1) - r;
    scalar_t v = v0[idx], b = bstate0[idx], s = s0[idx], thr;
    idx_t off = idx;
#pragma unroll 4
    for (int t = 0; t < T; ++t, off += BN) {
        alif_step(current[off], a, one_m_a, r, one_m_r, th0, bt, v, b, s, thr);
        spikes[off] = s;
        v_trace[off] = v;
        thr_trace[off] = thr;
        if (b_trace != nullptr) b_trace[off] = b;
    }
    v_out[idx] = v;
    b_out[idx] = b;
    s_out[idx] = s;
}

// ---------------------------------------------------------------------------------------------
// Feed-forward backward: one thread per (b, n), reverse time, adjoints in registers.
// Incoming gradients g_* may be null (treated as zero).
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void alif_ff_backward(
    const scalar_t* __restrict__ inputs, const scalar_t* __restrict__ spikes, const scalar_t* __restrict__ v_trace,
    const scalar_t* __restrict__ b_trace, const scalar_t* __restrict__ v0, const scalar_t* __restrict__ bstate0,
    const scalar_t* __restrict__ s0, const scalar_t* __restrict__ alpha, const scalar_t* __restrict__ rho,
    const scalar_t* __restrict__ b0, const scalar_t* __restrict__ beta, const scalar_t* __restrict__ g_spikes,
    const scalar_t* __restrict__ g_vtrace, const scalar_t* __restrict__ g_thr, const scalar_t* __restrict__ g_vT,
    const scalar_t* __restrict__ g_bT, const scalar_t* __restrict__ g_sT, SG_ARGS, scalar_t* __restrict__ g_current,
    scalar_t* __restrict__ g_v0, scalar_t* __restrict__ g_bstate0, scalar_t* __restrict__ g_s0,
    scalar_t* __restrict__ p_alpha, scalar_t* __restrict__ p_rho, scalar_t* __restrict__ p_b0,
    scalar_t* __restrict__ p_beta, const int T, const int B, const int N) {
    const idx_t BN = (idx_t)B * N;
    const idx_t idx = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= BN) return;
    const int n = (int)(idx % N);
    const scalar_t a = alpha[n], r = rho[n], th0 = b0[n], bt = beta[n];
    scalar_t Gv = g_vT ? g_vT[idx] : scalar_t(0);
    scalar_t Gb = g_bT ? g_bT[idx] : scalar_t(0);
    scalar_t Gs = g_sT ? g_sT[idx] : scalar_t(0);
    scalar_t acc_a = 0, acc_r = 0, acc_b0 = 0, acc_beta = 0;
    idx_t off = (idx_t)(T - 1) * BN + idx;
    scalar_t v_t = v_trace[off], b_t = b_trace[off];
    for (int t = T - 1; t >= 0; --t, off -= BN) {
        scalar_t v_p, b_p, s_p;
        alif_previous_state(v_trace, b_trace, spikes, v0, bstate0, s0, t, off, BN, idx, v_p, b_p, s_p);
        const scalar_t thr = alif_threshold(th0, bt, b_t);
        g_current[off] = alif_adjoint_step(SG_G(v_t - thr), g_spikes ? g_spikes[off] : scalar_t(0),
                                           g_vtrace ? g_vtrace[off] : scalar_t(0), g_thr ? g_thr[off] : scalar_t(0), a,
                                           r, bt, thr, b_t, v_p, b_p, s_p, inputs[off], Gv, Gb, Gs, acc_a, acc_r,
                                           acc_b0, acc_beta);
        v_t = v_p;
        b_t = b_p;
    }
    g_v0[idx] = Gv;
    g_bstate0[idx] = Gb;
    g_s0[idx] = Gs;
    p_alpha[idx] = acc_a;
    p_rho[idx] = acc_r;
    p_b0[idx] = acc_b0;
    p_beta[idx] = acc_beta;
}

// ---------------------------------------------------------------------------------------------
// Recurrent forward: one persistent launch for all T steps (grid <= number of SMs, one grid
// barrier per step). A work unit is (sample b, chunk of ALIF_REC_THREADS neurons); a block
// walks its units each step. The running state lives in v_out/b_out/s_out (each entry touched
// by one thread only); the previous step's spikes of the whole sample, written by other
// blocks, are read from `spikes` (or s0) through L2. When a backward will follow (b_trace not
// null), the total input I_t = current_t + W_hh s_{t-1} + b_hh is kept in i_total for it.
//
// Event-sparse input: per tile of ALIF_TILE presynaptic units, each warp ballots its 128
// entries of s_{t-1} != 0 and writes the indices (ascending) into its slice of a shared
// list; every thread then sums wt[j, n]*s_{t-1}[j] over the listed j only, warp slice by
// warp slice, so the summation order is fixed (ascending j): deterministic.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(ALIF_REC_THREADS)
    alif_rec_forward(const scalar_t* __restrict__ current, const scalar_t* __restrict__ v0,
                     const scalar_t* __restrict__ bstate0, const scalar_t* __restrict__ s0,
                     const scalar_t* __restrict__ alpha, const scalar_t* __restrict__ rho,
                     const scalar_t* __restrict__ b0, const scalar_t* __restrict__ beta,
                     const scalar_t* __restrict__ wt, const scalar_t* __restrict__ bias_hh, scalar_t* spikes,
                     scalar_t* __restrict__ v_trace, scalar_t* __restrict__ b_trace, scalar_t* __restrict__ thr_trace,
                     scalar_t* __restrict__ v_out, scalar_t* __restrict__ b_out, scalar_t* __restrict__ s_out,
                     scalar_t* __restrict__ i_total, unsigned int* counter, const int T, const int B, const int N) {
    __shared__ int list[ALIF_TILE];
    __shared__ scalar_t vals[ALIF_TILE];
    __shared__ int counts[ALIF_REC_WARPS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const idx_t BN = (idx_t)B * N;
    const int chunks = (N + ALIF_REC_THREADS - 1) / ALIF_REC_THREADS;
    const int units = B * chunks;
    unsigned int target = 0;
    for (int t = 0; t < T; ++t) {
        for (int u = blockIdx.x; u < units; u += gridDim.x) {
            const int b = u / chunks;
            const int n = (u % chunks) * ALIF_REC_THREADS + threadIdx.x;
            const scalar_t* s_prev = (t == 0) ? s0 + (idx_t)b * N : spikes + (idx_t)(t - 1) * BN + (idx_t)b * N;
            scalar_t acc = 0;
            for (int j0 = 0; j0 < N; j0 += ALIF_TILE) {
                int count = 0;
                const int base = j0 + warp * ALIF_TILE_PER_WARP;
#pragma unroll
                for (int k = 0; k < ALIF_TILE_PER_WARP / 32; ++k) {
                    const int j = base + k * 32 + lane;
                    const scalar_t sv = j < N ? evsnn_ldcg(s_prev + j) : scalar_t(0);
                    const unsigned int mask = __ballot_sync(EVSNN_FULL_MASK, sv != scalar_t(0));
                    if (sv != scalar_t(0)) {
                        const int pos = warp * ALIF_TILE_PER_WARP + count + __popc(mask & evsnn_lanemask_lt());
                        list[pos] = j;
                        vals[pos] = sv;
                    }
                    count += __popc(mask);
                }
                if (lane == 0) counts[warp] = count;
                __syncthreads();
                if (n < N) {
                    for (int w = 0; w < ALIF_REC_WARPS; ++w) {
                        const int c = counts[w];
#pragma unroll 8
                        for (int k = 0; k < c; ++k) {
                            const int pos = w * ALIF_TILE_PER_WARP + k;
                            acc += wt[(idx_t)list[pos] * N + n] * vals[pos];
                        }
                    }
                }
                __syncthreads();
            }
            if (n < N) {
                const idx_t sidx = (idx_t)b * N + n;
                const idx_t off = (idx_t)t * BN + sidx;
                scalar_t v, bb, s;
                if (t == 0) {
                    v = v0[sidx];
                    bb = bstate0[sidx];
                    s = s0[sidx];
                } else {
                    v = v_out[sidx];
                    bb = b_out[sidx];
                    s = s_out[sidx];
                }
                scalar_t rec = acc;
                if (bias_hh != nullptr) rec = rec + bias_hh[n];
                const scalar_t i_t = current[off] + rec;
                scalar_t thr;
                alif_step(i_t, alpha[n], scalar_t(1) - alpha[n], rho[n], scalar_t(1) - rho[n], b0[n], beta[n], v, bb, s,
                          thr);
                spikes[off] = s;
                v_trace[off] = v;
                thr_trace[off] = thr;
                if (b_trace != nullptr) {
                    b_trace[off] = bb;
                    i_total[off] = i_t;
                }
                v_out[sidx] = v;
                b_out[sidx] = bb;
                s_out[sidx] = s;
            }
        }
        if (t + 1 < T) evsnn_grid_barrier(counter, target);
    }
}

// ---------------------------------------------------------------------------------------------
// Recurrent backward: one persistent launch, reverse time, one grid barrier per step, the same
// units as the forward. At step t a unit (b, chunk of units j) first completes dL/ds_t of its
// units with the recurrent term (W_hh^T dI_{t+1})[j] = sum_n wt[j, n] dI_{t+1}[b, n], computed
// ONLY for the units whose pseudo-derivative g(v_t - B_t) is nonzero (everywhere else dL/ds_t
// is multiplied by 0 and never used): one warp per such unit, a lane-strided dot product with a
// fixed butterfly reduction (deterministic). Then it runs the elementwise backward of step t
// for its units and writes dI_t = g_current[t]. After the last step the recurrent term for
// the initial spikes s0 is computed for every unit (dense), since dL/ds0 is an output.
//
// The carried adjoints Gv, Gb, Gs live in g_v0, g_bstate0, g_s0 (each entry owned by one
// thread) and end as the initial-state gradients; the parameter partials in p_*.
// ---------------------------------------------------------------------------------------------
// Dense variant for a whole chunk: rec[j - j_base] = sum_n W[n, j] d[n] for the ALIF_REC_THREADS
// units j of the chunk, reading W_hh row-major (w[n*N + j]): each warp takes every fourth n and
// all units of the chunk (4 per lane, coalesced 128-byte loads, many in flight), d is staged in
// shared memory, and the four warps' partial sums are added in a fixed order: deterministic.
// Every thread of the block must call it (it synchronises).
__device__ __forceinline__ void alif_rec_dot_cols(const scalar_t* __restrict__ w, const scalar_t* d_row,
                                                  scalar_t* d_sh, scalar_t (*red)[ALIF_REC_THREADS], scalar_t* rec,
                                                  const int j_base, const int N) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    scalar_t acc[4] = {0, 0, 0, 0};
    for (int n0 = 0; n0 < N; n0 += ALIF_DOT_TILE) {
        const int len = min(ALIF_DOT_TILE, N - n0);
        __syncthreads();
        for (int k = threadIdx.x; k < len; k += ALIF_REC_THREADS) d_sh[k] = evsnn_ldcg(d_row + n0 + k);
        __syncthreads();
        if (j_base + ALIF_REC_THREADS <= N) {
            // Latency-bound on L2: unroll deeply so that each thread has ~64 loads in flight.
#pragma unroll 16
            for (int k = warp; k < len; k += ALIF_REC_WARPS) {
                const scalar_t d = d_sh[k];
                const scalar_t* wr = w + (idx_t)(n0 + k) * N + j_base + lane;
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[q] += wr[32 * q] * d;
            }
        } else {
#pragma unroll 4
            for (int k = warp; k < len; k += ALIF_REC_WARPS) {
                const scalar_t d = d_sh[k];
                const scalar_t* wr = w + (idx_t)(n0 + k) * N + j_base + lane;
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    if (j_base + lane + 32 * q < N) acc[q] += wr[32 * q] * d;
                }
            }
        }
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) red[warp][lane + 32 * q] = acc[q];
    __syncthreads();
    scalar_t sum = red[0][threadIdx.x];
#pragma unroll
    for (int k = 1; k < ALIF_REC_WARPS; ++k) sum += red[k][threadIdx.x];
    rec[threadIdx.x] = sum;
}

__device__ __forceinline__ void alif_rec_dot_rows(const scalar_t* __restrict__ wt, const scalar_t* d_row,
                                                  const int* list, const int count, scalar_t* rec, const int j_base,
                                                  const int N) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int k = warp; k < count; k += ALIF_REC_WARPS) {
        const int j = list[k];
        const scalar_t* row = wt + (idx_t)j * N;
        scalar_t sum = 0;
#pragma unroll 4
        for (int n = lane; n < N; n += 32) sum += row[n] * evsnn_ldcg(d_row + n);
        sum = evsnn_warp_sum(sum);
        if (lane == 0) rec[j - j_base] = sum;
    }
}

extern "C" __global__ void __launch_bounds__(ALIF_REC_THREADS) alif_rec_backward(
    const scalar_t* __restrict__ inputs, const scalar_t* __restrict__ spikes, const scalar_t* __restrict__ v_trace,
    const scalar_t* __restrict__ b_trace, const scalar_t* __restrict__ v0, const scalar_t* __restrict__ bstate0,
    const scalar_t* __restrict__ s0, const scalar_t* __restrict__ alpha, const scalar_t* __restrict__ rho,
    const scalar_t* __restrict__ b0, const scalar_t* __restrict__ beta, const scalar_t* __restrict__ wt,
    const scalar_t* __restrict__ w, const scalar_t* __restrict__ g_spikes, const scalar_t* __restrict__ g_vtrace,
    const scalar_t* __restrict__ g_thr, const scalar_t* __restrict__ g_vT, const scalar_t* __restrict__ g_bT,
    const scalar_t* __restrict__ g_sT, SG_ARGS,
    scalar_t* g_current, scalar_t* __restrict__ g_v0, scalar_t* __restrict__ g_bstate0, scalar_t* __restrict__ g_s0,
    scalar_t* __restrict__ p_alpha, scalar_t* __restrict__ p_rho, scalar_t* __restrict__ p_b0,
    scalar_t* __restrict__ p_beta, unsigned int* counter, const int T, const int B, const int N) {
    __shared__ int list[ALIF_REC_THREADS];
    __shared__ scalar_t rec[ALIF_REC_THREADS];
    __shared__ scalar_t d_sh[ALIF_DOT_TILE];
    __shared__ scalar_t red[ALIF_REC_WARPS][ALIF_REC_THREADS];
    __shared__ int count;
    const idx_t BN = (idx_t)B * N;
    const int chunks = (N + ALIF_REC_THREADS - 1) / ALIF_REC_THREADS;
    const int units = B * chunks;
    unsigned int target = 0;

    // Initialise the carries and partials of this block's units (own entries only).
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        const int b = u / chunks;
        const int n = (u % chunks) * ALIF_REC_THREADS + threadIdx.x;
        if (n < N) {
            const idx_t sidx = (idx_t)b * N + n;
            g_v0[sidx] = g_vT ? g_vT[sidx] : scalar_t(0);
            g_bstate0[sidx] = g_bT ? g_bT[sidx] : scalar_t(0);
            g_s0[sidx] = g_sT ? g_sT[sidx] : scalar_t(0);
            p_alpha[sidx] = 0;
            p_rho[sidx] = 0;
            p_b0[sidx] = 0;
            p_beta[sidx] = 0;
        }
    }

    for (int t = T - 1; t >= 0; --t) {
        for (int u = blockIdx.x; u < units; u += gridDim.x) {
            const int b = u / chunks;
            const int j_base = (u % chunks) * ALIF_REC_THREADS;
            const int n = j_base + threadIdx.x;
            const bool valid = n < N;
            const idx_t sidx = (idx_t)b * N + n;
            const idx_t off = (idx_t)t * BN + sidx;
            scalar_t v_t = 0, b_t = 0, thr = 0, g = 0;
            const scalar_t th0 = valid ? b0[n] : scalar_t(0), bt = valid ? beta[n] : scalar_t(0);
            if (valid) {
                v_t = v_trace[off];
                b_t = b_trace[off];
                thr = alif_threshold(th0, bt, b_t);
                g = SG_G(v_t - thr);
            }
            // Recurrent part of dL/ds_t, only where g != 0.
            const bool need = valid && (t + 1 < T) && g != scalar_t(0);
            if (threadIdx.x == 0) count = 0;
            __syncthreads();
            if (need) list[atomicAdd(&count, 1)] = n;  // which warp takes which row does not change any sum
            __syncthreads();
            if (t + 1 < T) {
                const scalar_t* d_row = g_current + (idx_t)(t + 1) * BN + (idx_t)b * N;
                if (count > ALIF_SPARSE_ROWS)  // uniform across the block: count is shared
                    alif_rec_dot_cols(w, d_row, d_sh, red, rec, j_base, N);
                else
                    alif_rec_dot_rows(wt, d_row, list, count, rec, j_base, N);
            }
            __syncthreads();
            if (valid) {
                scalar_t v_p, b_p, s_p;
                alif_previous_state(v_trace, b_trace, spikes, v0, bstate0, s0, t, off, BN, sidx, v_p, b_p, s_p);
                scalar_t Gs = g_s0[sidx];
                if (need) Gs = Gs + rec[threadIdx.x];
                g_current[off] = alif_adjoint_step(
                    g, g_spikes ? g_spikes[off] : scalar_t(0), g_vtrace ? g_vtrace[off] : scalar_t(0),
                    g_thr ? g_thr[off] : scalar_t(0), alpha[n], rho[n], bt, thr, b_t, v_p, b_p, s_p, inputs[off],
                    g_v0[sidx], g_bstate0[sidx], Gs, p_alpha[sidx], p_rho[sidx], p_b0[sidx], p_beta[sidx]);
                g_s0[sidx] = Gs;
            }
        }
        evsnn_grid_barrier(counter, target);
    }

    // dL/ds0 += W_hh^T dI_0 for every unit.
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        const int b = u / chunks;
        const int j_base = (u % chunks) * ALIF_REC_THREADS;
        const int n = j_base + threadIdx.x;
        alif_rec_dot_cols(w, g_current + (idx_t)b * N, d_sh, red, rec, j_base, N);
        __syncthreads();
        if (n < N) g_s0[(idx_t)b * N + n] += rec[threadIdx.x];
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------
// Recurrent backward with W_hh resident in shared memory (used when it fits; the host picks it).
//
// Why: in alif_rec_backward every work unit re-reads its 128-column slab of W_hh (256 KB) from
// L2 at every step, 32 MB per step at B = 32, N = 512; latency-bound, ~70 % of the backward.
// Here block (c, g) OWNS the ALIF_SM_COLS columns j of chunk c for a fixed contiguous range of
// samples (group g): it copies W_hh[:, chunk] into shared memory once, keeps it for all T steps,
// and serves ALIF_SM_TILE samples per pass from it. The carries Gv, Gb, Gs and the parameter
// partials of its (sample, column) pairs live in shared memory too and are written out at the end.
//
// Thread (s = warp, jc = lane) runs the elementwise backward of pair (sample s of the pass,
// column j_base + jc), exactly as alif_rec_backward. The product rec[s][jc] = sum_n W[n, j] d_s[n]
// (d = dI_{t+1} of the pass's samples, staged transposed as dT[n][s]) is split over the 4 warps by
// contiguous row quarters; per row a lane reads one W entry (conflict-free) and one broadcast
// vector of the 4 samples' d, and the 4 quarters are added in a fixed order: deterministic.
// The product is skipped when no pair of the pass has a nonzero pseudo-derivative.
//
// Dynamic shared memory (scalar_t): W [N][ALIF_SM_COLS], dT [N][ALIF_SM_TILE],
// red [4][ALIF_SM_TILE][ALIF_SM_COLS], carries/partials [7][spb][ALIF_SM_COLS].
// Grid: chunks * groups blocks, all resident (grid <= number of SMs, one grid barrier per step).
// ---------------------------------------------------------------------------------------------
#define ALIF_SM_COLS 32
#define ALIF_SM_TILE (ALIF_REC_THREADS / ALIF_SM_COLS)
#if ALIF_SM_COLS != 32 || ALIF_SM_TILE != 4
#error "alif_rec_backward_smem assumes 32 columns (one per lane) and 4 samples (one per warp) per pass"
#endif

// The 4 samples' d of one row (16-byte aligned in shared memory).
__device__ __forceinline__ void alif_sm_load4(const float* p, float& d0, float& d1, float& d2, float& d3) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    d0 = v.x;
    d1 = v.y;
    d2 = v.z;
    d3 = v.w;
}
__device__ __forceinline__ void alif_sm_load4(const double* p, double& d0, double& d1, double& d2, double& d3) {
    const double2 u = *reinterpret_cast<const double2*>(p);
    const double2 v = *(reinterpret_cast<const double2*>(p) + 1);
    d0 = u.x;
    d1 = u.y;
    d2 = v.x;
    d3 = v.y;
}

// Returns rec[s = warp][jc = lane] = sum_n W[n, j] dT[n][s] for the pass staged in dT; every thread must call it.
__device__ __forceinline__ scalar_t alif_sm_dot(const scalar_t* Ws, const scalar_t* dT, scalar_t* red, const int N) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rows = (N + ALIF_REC_WARPS - 1) / ALIF_REC_WARPS;
    const int n_begin = warp * rows, n_end = min(N, n_begin + rows);
    scalar_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
#pragma unroll 8
    for (int n = n_begin; n < n_end; ++n) {
        const scalar_t wv = Ws[n * ALIF_SM_COLS + lane];
        scalar_t d0, d1, d2, d3;
        alif_sm_load4(dT + n * ALIF_SM_TILE, d0, d1, d2, d3);  // one broadcast vector load
        // Explicit fma: one instruction per multiply-add (the file is compiled with --fmad=false).
        acc0 = fma(wv, d0, acc0);
        acc1 = fma(wv, d1, acc1);
        acc2 = fma(wv, d2, acc2);
        acc3 = fma(wv, d3, acc3);
    }
    scalar_t* r = red + warp * ALIF_SM_TILE * ALIF_SM_COLS;
    r[0 * ALIF_SM_COLS + lane] = acc0;
    r[1 * ALIF_SM_COLS + lane] = acc1;
    r[2 * ALIF_SM_COLS + lane] = acc2;
    r[3 * ALIF_SM_COLS + lane] = acc3;
    __syncthreads();
    // Thread (s = warp, jc = lane): quarters 0..3 in order.
    const int idx = warp * ALIF_SM_COLS + lane;
    scalar_t sum = red[idx];
#pragma unroll
    for (int q = 1; q < ALIF_REC_WARPS; ++q) sum += red[q * ALIF_SM_TILE * ALIF_SM_COLS + idx];
    return sum;
}

// Stage dT[n][s] = d_row(sample b_pass + s)[n] (zero for samples past b_end).
__device__ __forceinline__ void alif_sm_stage(const scalar_t* rows, scalar_t* dT, const int b_pass, const int b_end,
                                              const int N) {
    for (int k = threadIdx.x; k < ALIF_SM_TILE * N; k += ALIF_REC_THREADS) {
        const int s = k / N, n = k - s * N;
        const int b = b_pass + s;
        dT[n * ALIF_SM_TILE + s] = b < b_end ? evsnn_ldcg(rows + (idx_t)b * N + n) : scalar_t(0);
    }
}

extern "C" __global__ void __launch_bounds__(ALIF_REC_THREADS) alif_rec_backward_smem(
    const scalar_t* __restrict__ inputs, const scalar_t* __restrict__ spikes, const scalar_t* __restrict__ v_trace,
    const scalar_t* __restrict__ b_trace, const scalar_t* __restrict__ v0, const scalar_t* __restrict__ bstate0,
    const scalar_t* __restrict__ s0, const scalar_t* __restrict__ alpha, const scalar_t* __restrict__ rho,
    const scalar_t* __restrict__ b0, const scalar_t* __restrict__ beta, const scalar_t* __restrict__ w,
    const scalar_t* __restrict__ g_spikes, const scalar_t* __restrict__ g_vtrace, const scalar_t* __restrict__ g_thr,
    const scalar_t* __restrict__ g_vT, const scalar_t* __restrict__ g_bT, const scalar_t* __restrict__ g_sT, SG_ARGS,
    scalar_t* g_current, scalar_t* __restrict__ g_v0, scalar_t* __restrict__ g_bstate0, scalar_t* __restrict__ g_s0,
    scalar_t* __restrict__ p_alpha, scalar_t* __restrict__ p_rho, scalar_t* __restrict__ p_b0,
    scalar_t* __restrict__ p_beta, unsigned int* counter, const int T, const int B, const int N, const int spb) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    scalar_t* Ws = reinterpret_cast<scalar_t*>(smem_raw);
    scalar_t* dT = Ws + (idx_t)N * ALIF_SM_COLS;
    scalar_t* red = dT + (idx_t)N * ALIF_SM_TILE;
    scalar_t* st = red + ALIF_REC_WARPS * ALIF_SM_TILE * ALIF_SM_COLS;  // [7][spb][ALIF_SM_COLS]
    const int per = spb * ALIF_SM_COLS;
    scalar_t *sGv = st, *sGb = st + per, *sGs = st + 2 * per;
    scalar_t *sPa = st + 3 * per, *sPr = st + 4 * per, *sPb0 = st + 5 * per, *sPbeta = st + 6 * per;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const idx_t BN = (idx_t)B * N;
    const int chunk = blockIdx.x % ((N + ALIF_SM_COLS - 1) / ALIF_SM_COLS);
    const int group = blockIdx.x / ((N + ALIF_SM_COLS - 1) / ALIF_SM_COLS);
    const int j_base = chunk * ALIF_SM_COLS;
    const int b_first = group * spb, b_end = min(B, b_first + spb);
    const int n = j_base + lane;
    const bool col_ok = n < N;
    unsigned int target = 0;

    // W_hh[:, chunk] -> shared (zero past N), once for the whole sequence.
    for (int k = threadIdx.x; k < N * ALIF_SM_COLS; k += ALIF_REC_THREADS) {
        const int row = k / ALIF_SM_COLS, jc = k - row * ALIF_SM_COLS;
        Ws[k] = j_base + jc < N ? w[(idx_t)row * N + j_base + jc] : scalar_t(0);
    }
    for (int k = threadIdx.x; k < per; k += ALIF_REC_THREADS) {
        const int b = b_first + k / ALIF_SM_COLS, j = j_base + k % ALIF_SM_COLS;
        const bool ok = b < b_end && j < N;
        const idx_t sidx = (idx_t)b * N + j;
        sGv[k] = ok && g_vT ? g_vT[sidx] : scalar_t(0);
        sGb[k] = ok && g_bT ? g_bT[sidx] : scalar_t(0);
        sGs[k] = ok && g_sT ? g_sT[sidx] : scalar_t(0);
        sPa[k] = sPr[k] = sPb0[k] = sPbeta[k] = scalar_t(0);
    }
    const scalar_t a = col_ok ? alpha[n] : scalar_t(0), r = col_ok ? rho[n] : scalar_t(0);
    const scalar_t th0 = col_ok ? b0[n] : scalar_t(0), bt = col_ok ? beta[n] : scalar_t(0);
    __syncthreads();

    for (int t = T - 1; t >= 0; --t) {
        for (int b_pass = b_first; b_pass < b_end; b_pass += ALIF_SM_TILE) {
            const int b = b_pass + warp;
            const bool valid = col_ok && b < b_end;
            const idx_t sidx = (idx_t)b * N + n;
            const idx_t off = (idx_t)t * BN + sidx;
            const int k = (b - b_first) * ALIF_SM_COLS + lane;
            // Every global load of the pair first (one memory latency), the product after.
            scalar_t v_t = 0, b_t = 0, v_p = 0, b_p = 0, s_p = 0, i_t = 0, gsp = 0, gvt = 0, gth = 0;
            if (valid) {
                v_t = v_trace[off];
                b_t = b_trace[off];
                alif_previous_state(v_trace, b_trace, spikes, v0, bstate0, s0, t, off, BN, sidx, v_p, b_p, s_p);
                i_t = inputs[off];
                if (g_spikes) gsp = g_spikes[off];
                if (g_vtrace) gvt = g_vtrace[off];
                if (g_thr) gth = g_thr[off];
            }
            const scalar_t thr = alif_threshold(th0, bt, b_t);
            const scalar_t g = valid ? SG_G(v_t - thr) : scalar_t(0);
            const bool need = valid && (t + 1 < T) && g != scalar_t(0);
            scalar_t rec = 0;
            if (__syncthreads_or(need)) {  // uniform: the product only if some pair of the pass needs it
                alif_sm_stage(g_current + (idx_t)(t + 1) * BN, dT, b_pass, b_end, N);
                __syncthreads();
                rec = alif_sm_dot(Ws, dT, red, N);
            }
            if (valid) {
                scalar_t Gs = sGs[k];
                if (need) Gs = Gs + rec;
                g_current[off] = alif_adjoint_step(g, gsp, gvt, gth, a, r, bt, thr, b_t, v_p, b_p, s_p, i_t, sGv[k],
                                                   sGb[k], Gs, sPa[k], sPr[k], sPb0[k], sPbeta[k]);
                sGs[k] = Gs;
            }
        }
        evsnn_grid_barrier(counter, target);
    }

    // dL/ds0 += W_hh^T dI_0 for every pair (dense: dL/ds0 is an output), then write everything out.
    for (int b_pass = b_first; b_pass < b_end; b_pass += ALIF_SM_TILE) {
        __syncthreads();
        alif_sm_stage(g_current, dT, b_pass, b_end, N);
        __syncthreads();
        const scalar_t rec = alif_sm_dot(Ws, dT, red, N);
        const int b = b_pass + warp;
        if (col_ok && b < b_end) sGs[(b - b_first) * ALIF_SM_COLS + lane] += rec;
        __syncthreads();  // red and dT are reused by the next pass
    }
    __syncthreads();
    for (int k = threadIdx.x; k < per; k += ALIF_REC_THREADS) {
        const int b = b_first + k / ALIF_SM_COLS, j = j_base + k % ALIF_SM_COLS;
        if (b < b_end && j < N) {
            const idx_t sidx = (idx_t)b * N + j;
            g_v0[sidx] = sGv[k];
            g_bstate0[sidx] = sGb[k];
            g_s0[sidx] = sGs[k];
            p_alpha[sidx] = sPa[k];
            p_rho[sidx] = sPr[k];
            p_b0[sidx] = sPb0[k];
            p_beta[sidx] = sPbeta[k];
        }
    }
}
