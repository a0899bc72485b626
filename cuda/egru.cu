// EGRU (SPEC.md §3): one persistent kernel for the whole forward sequence and one for the
// whole backward (BPTT) sequence, each with a grid barrier per step.
//
// Partition: block k owns the EGRU_U units U_k = [k·EGRU_U, (k+1)·EGRU_U) ∩ [0, H) for every
// sample. The grid has ceil(H / EGRU_U) <= #SM blocks, all co-resident (one per SM).
//
// Forward, step t, sample b (one warp per sample):
//   the warp scans y_{t−1}[b, :] 32 columns at a time, compacts the nonzero entries (the events)
//   with __ballot_sync into a 64-entry warp buffer and, every 32 events, lets each lane multiply
//   one event column of W_hh (rows r, z, n of its units) by y_j: the work is ∝ number of events,
//   not H. A warp reduction gives W_h{r,z,n} y_{t−1} for the block's units; lane u runs the step
//   of unit u (egru_step of egru.cuh) and saves r, z, n, hn = W_hn y + b_hn and c_pre.
// Backward, step t = T−1 … 0, pair (b, k) of the block:
//   Y = ∂L/∂y_t is needed only where o_t = 1 or |c_pre − θ| < support (else it is multiplied by
//   exactly 0: SPEC §3 sparse BPTT); only for those pairs a warp computes Σ_j W_hh[j, k] δh_{t+1}[b, j]
//   over the 3H gate rows (event-sparse backward). The pointwise backward (egru_adjoint_step of
//   egru.cuh) then writes the gate pre-activation gradients δi_t = (da_r, da_z, da_n) and
//   δh_t = (da_r, da_z, da_n ⊙ r), carries ∂L/∂c in global memory owned by the same thread, and
//   accumulates ∂L/∂θ per (b, k) in a fixed order (deterministic; the host sums over b). Weight
//   gradients are dense GEMMs on the host.
//
// Defines: scalar_t (float|double), EGRU_U (units per block: 1, 2, 4, 8 or 16), EGRU_THREADS.

#include "common.cuh"
#include "egru.cuh"

#ifndef EGRU_U
#error "EGRU_U (units per block) must be defined"
#endif

// Threads per block: 1024 where the register tile allows it (U <= 4), else 512; the host
// passes the same value. More warps = more samples and needed pairs processed concurrently.
#ifndef EGRU_THREADS
#error "EGRU_THREADS (512 or 1024) must be defined"
#endif
#define EGRU_WARPS (EGRU_THREADS / 32)
// Chunks of 32 columns of y_{t−1} loaded before their ballots, so that the loads overlap.
#define EGRU_PREFETCH 8
#define EGRU_ROWS (3 * EGRU_U)
// Odd stride of the packed forward weights: lanes reading different columns hit different banks.
#define EGRU_WSTRIDE (3 * EGRU_U + 1)
#define EGRU_BUF 64

// Forward over all T steps.
//   gi      [T, B, 3H]  input projection W_ih x_t + b_ih (r, z, n)
//   y0      [B, H]      initial event output
//   wpack   [nblocks, H, EGRU_WSTRIDE]  wpack[k, j, g·U + u] = W_hh[g·H + k·U + u, j] (0 past H)
//   bias_hh [3H]
//   theta   [H]
//   out     [T, B, H]   y_t
//   c_state [B, H]      in: c_0, out: c_T (each element read/written by one thread only)
//   save    [5, T, B, H] r, z, n, hn, c_pre
//   barrier one zeroed unsigned int
// Dynamic shared memory: [EGRU_WARPS·EGRU_BUF scalars][EGRU_WARPS·EGRU_BUF ints][H·EGRU_WSTRIDE scalars if use_smem]
extern "C" __global__ void __launch_bounds__(EGRU_THREADS, 1)
    egru_forward(const scalar_t* __restrict__ gi, const scalar_t* __restrict__ y0, const scalar_t* __restrict__ wpack,
                 const scalar_t* __restrict__ bias_hh, const scalar_t* __restrict__ theta, scalar_t* out,
                 scalar_t* __restrict__ c_state, scalar_t* __restrict__ save, unsigned int* barrier, int T, int B, int H,
                 int use_smem, int reset_threshold) {
    extern __shared__ unsigned char evsnn_smem[];
    scalar_t* s_val = reinterpret_cast<scalar_t*>(evsnn_smem);
    int* s_idx = reinterpret_cast<int*>(s_val + EGRU_WARPS * EGRU_BUF);
    scalar_t* s_w = reinterpret_cast<scalar_t*>(s_idx + EGRU_WARPS * EGRU_BUF);

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int kbase = blockIdx.x * EGRU_U;
    const size_t wsize = (size_t)H * EGRU_WSTRIDE;
    const scalar_t* wblock = wpack + (size_t)blockIdx.x * wsize;
    if (use_smem) {
        for (size_t i = threadIdx.x; i < wsize; i += EGRU_THREADS) s_w[i] = wblock[i];
        __syncthreads();
    }
    const scalar_t* W = use_smem ? s_w : wblock;
    const size_t BH = (size_t)B * H;
    const size_t H3 = 3 * (size_t)H;
    scalar_t* save_r = save;
    scalar_t* save_z = save + (size_t)T * BH;
    scalar_t* save_n = save + 2 * (size_t)T * BH;
    scalar_t* save_hn = save + 3 * (size_t)T * BH;
    scalar_t* save_c = save + 4 * (size_t)T * BH;
    scalar_t* bval = s_val + warp * EGRU_BUF;
    int* bidx = s_idx + warp * EGRU_BUF;
    const unsigned int lt = evsnn_lanemask_lt();
    unsigned int target = 0;

    for (int t = 0; t < T; ++t) {
        const scalar_t* yprev_all = t == 0 ? y0 : out + (size_t)(t - 1) * BH;
        for (int b = warp; b < B; b += EGRU_WARPS) {
            const scalar_t* yp = yprev_all + (size_t)b * H;
            scalar_t acc[EGRU_ROWS];
#pragma unroll
            for (int r = 0; r < EGRU_ROWS; ++r) acc[r] = scalar_t(0);
            // Operands of this lane's gates, loaded now so their latency hides behind the scan.
            const int k = kbase + lane;
            const bool owner = lane < EGRU_U && k < H;
            const size_t bk = (size_t)b * H + (owner ? k : 0);
            const scalar_t* g = gi + ((size_t)t * B + b) * H3;
            scalar_t gr = 0, gz = 0, gn = 0, br = 0, bz = 0, bn = 0, cprev = 0, yown = 0, th = 0;
            if (owner) {
                gr = g[k];
                gz = g[H + k];
                gn = g[2 * H + k];
                br = bias_hh[k];
                bz = bias_hh[H + k];
                bn = bias_hh[2 * H + k];
                cprev = c_state[bk];
                // The same thread wrote y_{t−1}[b, k] (or it is the input y0): a plain load is coherent.
                yown = yprev_all[bk];
                th = theta[k];
            }
            int count = 0;
            for (int c00 = 0; c00 < H; c00 += 32 * EGRU_PREFETCH) {
                scalar_t vq[EGRU_PREFETCH];
#pragma unroll
                for (int q = 0; q < EGRU_PREFETCH; ++q) {
                    const int j = c00 + q * 32 + lane;
                    vq[q] = j < H ? evsnn_ldcg(yp + j) : scalar_t(0);
                }
#pragma unroll
                for (int q = 0; q < EGRU_PREFETCH; ++q) {
                    const int j = c00 + q * 32 + lane;
                    const scalar_t v = vq[q];
                    const bool active = v != scalar_t(0);
                    const unsigned int m = __ballot_sync(EVSNN_FULL_MASK, active);
                    if (active) {
                        const int pos = count + __popc(m & lt);
                        bidx[pos] = j;
                        bval[pos] = v;
                    }
                    count += __popc(m);
                    if (count >= 32) {
                        __syncwarp();
                        {
                            const scalar_t* w = W + (size_t)bidx[lane] * EGRU_WSTRIDE;
                            const scalar_t yv = bval[lane];
#pragma unroll
                            for (int r = 0; r < EGRU_ROWS; ++r) acc[r] += w[r] * yv;
                        }
                        const int rest = count - 32;
                        int ri = 0;
                        scalar_t rv = scalar_t(0);
                        if (lane < rest) {
                            ri = bidx[32 + lane];
                            rv = bval[32 + lane];
                        }
                        __syncwarp();
                        if (lane < rest) {
                            bidx[lane] = ri;
                            bval[lane] = rv;
                        }
                        count = rest;
                    }
                }
            }
            __syncwarp();
            if (lane < count) {
                const scalar_t* w = W + (size_t)bidx[lane] * EGRU_WSTRIDE;
                const scalar_t yv = bval[lane];
#pragma unroll
                for (int r = 0; r < EGRU_ROWS; ++r) acc[r] += w[r] * yv;
            }
            __syncwarp();  // the buffer is refilled for the next sample
            scalar_t hr = scalar_t(0), hz = scalar_t(0), hn = scalar_t(0);
#pragma unroll
            for (int r = 0; r < EGRU_ROWS; ++r) {
                const scalar_t s = evsnn_warp_sum(acc[r]);
                // Compile-time register indices only; lane u keeps the sums of its unit u.
                if (r % EGRU_U == lane) {
                    if (r < EGRU_U)
                        hr = s;
                    else if (r < 2 * EGRU_U)
                        hz = s;
                    else
                        hn = s;
                }
            }
            if (owner) {
                const size_t tbk = (size_t)t * BH + bk;
                scalar_t r, z, n, hnb, p, y, c;
                egru_step(gr, gz, gn, hr, hz, hn, br, bz, bn, cprev, yown, th, reset_threshold, r, z, n, hnb, p, y, c);
                out[tbk] = y;
                c_state[bk] = c;
                save_r[tbk] = r;
                save_z[tbk] = z;
                save_n[tbk] = n;
                save_hn[tbk] = hnb;
                save_c[tbk] = p;
            }
        }
        if (t + 1 < T) evsnn_grid_barrier(barrier, target);
    }
}

// Backward over all T steps (reverse time).
//   gy          [T, B, H]   ∂L/∂y_t from the outputs (the final-state y gradient already added at T−1)
//   save        [5, T, B, H] r, z, n, hn, c_pre of the forward
//   c0          [B, H]
//   wbpack      [nblocks, U, 3H]  wbpack[k, u, j] = W_hh[j, k·U + u] (0 past H)
//   theta       [H]
//   dgi, dgh    [T, B, 3H]  out: gate gradients seen by W_ih/b_ih and by W_hh/b_hh
//   dc          [B, H]      in: ∂L/∂c_T, out: ∂L/∂c_0
//   dp_next     [B, H]      zeroed; out: ∂L/∂c_pre_0 (the output reset's term of ∂L/∂y_0 is −dp_0)
//   dtheta_part [B, H]      zeroed; out: Σ_t ∂L/∂θ_k per sample
//   dyrec       [B, H]      scratch (W_hhᵀ δh_{t+1} for the needed pairs)
//   sg_*        surrogate spec (common.cuh); support: |x| >= support ⇒ g(x) = 0 (INFINITY if none)
// Dynamic shared memory: [B·EGRU_U ints: needed-pair list][EGRU_U·3H scalars if use_smem]
extern "C" __global__ void __launch_bounds__(EGRU_THREADS, 1)
    egru_backward(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ save, const scalar_t* __restrict__ c0,
                  const scalar_t* __restrict__ wbpack, const scalar_t* __restrict__ theta, scalar_t* dgi, scalar_t* dgh,
                  scalar_t* __restrict__ dc, scalar_t* __restrict__ dp_next, scalar_t* __restrict__ dtheta_part,
                  scalar_t* dyrec, unsigned int* barrier, int T, int B, int H, int use_smem, int reset_threshold,
                  int sg_kind, scalar_t sg_p0, scalar_t sg_p1, scalar_t sg_p2, scalar_t sg_p3, scalar_t sg_trunc,
                  scalar_t support) {
    extern __shared__ unsigned char evsnn_smem[];
    __shared__ int s_count;
    // The scalar array goes first so that it is aligned for double.
    scalar_t* s_w = reinterpret_cast<scalar_t*>(evsnn_smem);
    int* s_list = reinterpret_cast<int*>(s_w + (use_smem ? (size_t)EGRU_U * 3 * H : 0));

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int kbase = blockIdx.x * EGRU_U;
    const size_t H3 = 3 * (size_t)H;
    const size_t wsize = (size_t)EGRU_U * H3;
    const scalar_t* wblock = wbpack + (size_t)blockIdx.x * wsize;
    if (use_smem) {
        for (size_t i = threadIdx.x; i < wsize; i += EGRU_THREADS) s_w[i] = wblock[i];
    }
    const scalar_t* W = use_smem ? s_w : wblock;
    const size_t BH = (size_t)B * H;
    const scalar_t* save_r = save;
    const scalar_t* save_z = save + (size_t)T * BH;
    const scalar_t* save_n = save + 2 * (size_t)T * BH;
    const scalar_t* save_hn = save + 3 * (size_t)T * BH;
    const scalar_t* save_c = save + 4 * (size_t)T * BH;
    const int pairs = B * EGRU_U;
    unsigned int target = 0;

    for (int t = T - 1; t >= 0; --t) {
        if (threadIdx.x == 0) s_count = 0;
        __syncthreads();
        if (t + 1 < T) {
            // Pairs whose ∂L/∂y_t reaches the loss: o_t = 1 or inside the surrogate's support.
            for (int i = threadIdx.x; i < pairs; i += EGRU_THREADS) {
                const int k = kbase + i % EGRU_U;
                if (k >= H) continue;
                const size_t bk = (size_t)(i / EGRU_U) * H + k;
                const scalar_t x = save_c[(size_t)t * BH + bk] - theta[k];
                if (egru_in_support(x, support)) s_list[atomicAdd(&s_count, 1)] = i;
            }
            __syncthreads();
            const int count = s_count;
            // List order may vary between runs; each entry's sum does not (one warp, fixed order).
            for (int e = warp; e < count; e += EGRU_WARPS) {
                const int i = s_list[e];
                const int u = i % EGRU_U;
                const int b = i / EGRU_U;
                const scalar_t* w = W + (size_t)u * H3;
                const scalar_t* d = dgh + ((size_t)(t + 1) * B + b) * H3;
                scalar_t acc = scalar_t(0);
#pragma unroll 8
                for (int j = lane; j < (int)H3; j += 32) acc += w[j] * evsnn_ldcg(d + j);
                acc = evsnn_warp_sum(acc);
                if (lane == 0) dyrec[(size_t)b * H + kbase + u] = acc;
            }
            __syncthreads();
        }
        for (int i = threadIdx.x; i < pairs; i += EGRU_THREADS) {
            const int u = i % EGRU_U;
            const int k = kbase + u;
            if (k >= H) continue;
            const int b = i / EGRU_U;
            const size_t bk = (size_t)b * H + k;
            const size_t tbk = (size_t)t * BH + bk;
            const scalar_t r = save_r[tbk], z = save_z[tbk], n = save_n[tbk], hn = save_hn[tbk];
            const scalar_t p = save_c[tbk];
            const scalar_t th = theta[k];
            const scalar_t x = p - th;
            const bool need = egru_in_support(x, support);
            const scalar_t g = evsnn_surrogate_grad(sg_kind, sg_p0, sg_p1, sg_p2, sg_p3, sg_trunc, x);
            scalar_t Y = gy[tbk];
            if (need && t + 1 < T) Y += dyrec[bk];
            // Output reset: c_pre_{t+1} contains −y_t.
            if (!reset_threshold) Y -= dp_next[bk];
            const scalar_t cprev = t == 0 ? c0[bk] : egru_reset(save_c[tbk - BH], th, reset_threshold);
            scalar_t dar, daz, dan, dp, dth, dcprev;
            egru_adjoint_step(Y, dc[bk], g, r, z, n, hn, p, th, cprev, reset_threshold, dar, daz, dan, dp, dth, dcprev);
            scalar_t* gi_row = dgi + ((size_t)t * B + b) * H3;
            scalar_t* gh_row = dgh + ((size_t)t * B + b) * H3;
            gi_row[k] = dar;
            gi_row[H + k] = daz;
            gi_row[2 * H + k] = dan;
            gh_row[k] = dar;
            gh_row[H + k] = daz;
            gh_row[2 * H + k] = dan * r;
            dc[bk] = dcprev;
            dp_next[bk] = dp;
            dtheta_part[bk] += dth;
        }
        if (t > 0) evsnn_grid_barrier(barrier, target);
    }
}
