// DeltaGRU / DeltaLSTM (SPEC.md §4): event-sparse forward and symmetric sparse BPTT.
//
// Compile-time options (besides -Dscalar_t=float|double):
//   -DDELTA_LSTM=0|1   the cell (accumulator slots DELTA_GRU_* or DELTA_LSTM_* of delta.cuh)
//   -DDELTA_BT=n       samples whose active columns are merged (one read of a column serves n samples)
//   -DDELTA_PER=n      columns scanned per thread per chunk (a chunk is DELTA_PER·DELTA_BLOCK columns;
//                      the host picks the largest n whose shared memory fits in 48 KB)
//   -DDELTA_TAGGED=0|1 forward only, float only: blocks exchange Δh through tagged 64-bit words
//                      instead of a grid barrier per step (see delta_forward)
//
// Layouts (all contiguous):
//   wp      [I + H, H, 4]  packed weights: row k < I is input column k, row I + k hidden column k;
//                          wp[k, j, s] = weight of column k into accumulator slot s of unit j
//                          (GRU: zero where a slot takes no input from that side)
//   M       [.., B, H, 4]  accumulators unit-major (4 slots of a unit adjacent)
//   x, dx   [T, B, I];  h, Δh, c  [T, B, H]
//
// Grid: ceil(H / U) blocks of DELTA_BLOCK threads (at most one per SM, so every block is resident
// and the grid barrier of common.cuh is safe); block k owns hidden units [k·U, k·U + U).
#include "common.cuh"
#include "delta.cuh"

#ifndef DELTA_LSTM
#define DELTA_LSTM 0
#endif
#ifndef DELTA_BT
#define DELTA_BT 1
#endif
#ifndef DELTA_PER
#define DELTA_PER 1
#endif
#ifndef DELTA_TAGGED
#define DELTA_TAGGED 0
#endif
#define DELTA_BLOCK 512
#define DELTA_WARPS (DELTA_BLOCK / 32)
#define DELTA_UMAX 128
#define DELTA_PREFETCH 16
#define DELTA_CHUNK (DELTA_PER * DELTA_BLOCK)

// The packed weights hold 4 accumulator slots per (column, unit): one 16-byte (float) or two
// 16-byte (double) loads fetch every gate weight a unit needs from one active column.
__device__ __forceinline__ void delta_load4(const float* p, float (&w)[4]) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    w[0] = v.x;
    w[1] = v.y;
    w[2] = v.z;
    w[3] = v.w;
}

__device__ __forceinline__ void delta_load4(const double* p, double (&w)[4]) {
    const double2 a = __ldg(reinterpret_cast<const double2*>(p));
    const double2 b = __ldg(reinterpret_cast<const double2*>(p) + 1);
    w[0] = a.x;
    w[1] = a.y;
    w[2] = b.x;
    w[3] = b.y;
}

// The same, through L2 only: for data that other blocks of this launch wrote (δM in the backward).
__device__ __forceinline__ void delta_load4_cg(const float* p, float (&w)[4]) {
    const float4 v = __ldcg(reinterpret_cast<const float4*>(p));
    w[0] = v.x;
    w[1] = v.y;
    w[2] = v.z;
    w[3] = v.w;
}

__device__ __forceinline__ void delta_load4_cg(const double* p, double (&w)[4]) {
    const double2 a = __ldcg(reinterpret_cast<const double2*>(p));
    const double2 b = __ldcg(reinterpret_cast<const double2*>(p) + 1);
    w[0] = a.x;
    w[1] = a.y;
    w[2] = b.x;
    w[3] = b.y;
}

// Δx_t for every step (the input deltas do not depend on h): one thread per (b, i), sequential in t.
// Loads run DELTA_PREFETCH steps ahead so the scan is not one memory latency per step.
extern "C" __global__ void delta_encode_input(const scalar_t* __restrict__ x, const scalar_t* __restrict__ xhat0,
                                              scalar_t* __restrict__ dx, scalar_t* __restrict__ xhat_out, int T, int n,
                                              scalar_t theta, int inclusive) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    scalar_t mem = xhat0[i];
    for (int t0 = 0; t0 < T; t0 += DELTA_PREFETCH) {
        scalar_t v[DELTA_PREFETCH];
#pragma unroll
        for (int k = 0; k < DELTA_PREFETCH; ++k) v[k] = (t0 + k < T) ? __ldg(x + (long long)(t0 + k) * n + i) : scalar_t(0);
#pragma unroll
        for (int k = 0; k < DELTA_PREFETCH; ++k) {
            if (t0 + k < T) {
                dx[(long long)(t0 + k) * n + i] = delta_encode(v[k], mem, theta, inclusive);
            }
        }
    }
    xhat_out[i] = mem;
}

#if DELTA_TAGGED
// Δh exchange without a grid barrier. Every published value is one aligned 64-bit word
// (step tag << 32 | float bits), so a reader that sees the tag it expects has the value too: one
// single-copy-atomic store and load carry data and readiness together; no fence, no counter.
// The ring has 2 slots per (sample, unit): slot t & 1 holds Δh_t with tag t + 1 (a zeroed buffer
// never matches). A block overwrites slot t & 1 with Δh_{t+2} only after it has read all of Δh_{t+1},
// which every block publishes only after its own reads of Δh_t: no reader can lose a value.
static_assert(sizeof(scalar_t) == 4, "DELTA_TAGGED packs a float and a 32-bit tag into one 64-bit word");
__device__ __forceinline__ void delta_publish(unsigned long long* p, unsigned int tag, float v) {
    const unsigned long long word = ((unsigned long long)tag << 32) | (unsigned long long)__float_as_uint(v);
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(word) : "memory");
}
__device__ __forceinline__ unsigned long long delta_peek(const unsigned long long* p) {
    unsigned long long word;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(word) : "l"(p) : "memory");
    return word;
}
#endif

// Persistent forward over all T steps, one grid barrier per step (DELTA_TAGGED: none, see above).
// Per step and per tile of DELTA_BT samples: every block scans Δx_t and Δh_t, compacts the columns
// that are nonzero for any sample of the tile (ballot, order-preserving), and adds only those
// columns of the packed weights into its units' accumulators. The owner of a unit then computes
// the gates, h_t and Δh_{t+1}, which the other blocks read after the barrier.
extern "C" __global__ void __launch_bounds__(DELTA_BLOCK, 1)
    delta_forward(const scalar_t* __restrict__ dx, const scalar_t* __restrict__ wp, scalar_t* __restrict__ m_work,
                  scalar_t* __restrict__ h_work, scalar_t* __restrict__ hh_work, scalar_t* __restrict__ c_work,
                  scalar_t* __restrict__ out, scalar_t* dh, scalar_t* __restrict__ m_all, scalar_t* __restrict__ c_all,
                  unsigned int* counter, unsigned long long* xch, int T, int B, int I, int H, int U, scalar_t theta_h,
                  int inclusive) {
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int j0 = blockIdx.x * U;
    const int K = I + H;
    const int slots = DELTA_BLOCK / U;  // columns processed side by side
    const int uj = tid % U;
    const int slot = tid / U;
    const int jj = j0 + uj;
    const bool own = jj < H;
    const int group = U < 32 ? 32 : U;  // threads whose partial sums for one unit meet in shared memory
    const int ngroups = DELTA_BLOCK / group;
    const long long BH = (long long)B * H;

    __shared__ int s_idx[DELTA_CHUNK];
    __shared__ scalar_t s_val[DELTA_BT][DELTA_CHUNK];
    __shared__ scalar_t s_part[4 * DELTA_BLOCK];
    __shared__ scalar_t s_red[4 * DELTA_UMAX];
    __shared__ int s_wcount[DELTA_PER * DELTA_WARPS];
    #if !DELTA_TAGGED
    unsigned int target = 0;
#endif

    // Δh_0 from the initial (h, ĥ).
    for (int q = tid; q < B * U; q += DELTA_BLOCK) {
        const int u = j0 + q % U;
        if (u < H) {
            const long long o = (long long)(q / U) * H + u;
            scalar_t hh = hh_work[o];
            const scalar_t d = delta_encode(h_work[o], hh, theta_h, inclusive);
            dh[o] = d;
            hh_work[o] = hh;
#if DELTA_TAGGED
            delta_publish(xch + o, 1u, d);
#endif
        }
    }
#if DELTA_TAGGED
    (void)counter;
#else
    (void)xch;
    evsnn_grid_barrier(counter, target);
#endif

    for (int t = 0; t < T; ++t) {
        const scalar_t* dx_t = dx + (long long)t * B * I;
#if !DELTA_TAGGED
        const scalar_t* dh_t = dh + t * BH;
#endif
        for (int b0 = 0; b0 < B; b0 += DELTA_BT) {
            scalar_t acc[DELTA_BT][4];
#pragma unroll
            for (int bb = 0; bb < DELTA_BT; ++bb)
#pragma unroll
                for (int s = 0; s < 4; ++s) acc[bb][s] = scalar_t(0);
            // The owners' running state, loaded now so its latency overlaps the column scan.
            // own_hc: h_{t-1} (GRU) or c_{t-1} (LSTM), the state the cell update reads.
            scalar_t own_m[DELTA_BT][4], own_hc[DELTA_BT], own_hh[DELTA_BT];
#pragma unroll
            for (int bb = 0; bb < DELTA_BT; ++bb) {
                const int b = b0 + bb;
                own_hc[bb] = own_hh[bb] = scalar_t(0);
#pragma unroll
                for (int s = 0; s < 4; ++s) own_m[bb][s] = scalar_t(0);
                if (tid < U && j0 + tid < H && b < B) {
                    const long long o = (long long)b * H + j0 + tid;
#pragma unroll
                    for (int s = 0; s < 4; ++s) own_m[bb][s] = m_work[o * 4 + s];
                    own_hh[bb] = hh_work[o];
#if DELTA_LSTM
                    own_hc[bb] = c_work[o];
#else
                    own_hc[bb] = h_work[o];
#endif
                }
            }

            for (int base = 0; base < K; base += DELTA_CHUNK) {
                // All loads of the chunk are issued before the first use (one latency per chunk).
                scalar_t v[DELTA_PER][DELTA_BT];
                bool active[DELTA_PER];
#if DELTA_TAGGED
                // Issue every load first; then wait only on the words whose tag is not there yet.
                unsigned long long raw[DELTA_PER][DELTA_BT];
                const unsigned long long* xch_t = xch + (t & 1) * BH;
#endif
#pragma unroll
                for (int r = 0; r < DELTA_PER; ++r) {
                    const int p = base + r * DELTA_BLOCK + tid;
                    active[r] = false;
#pragma unroll
                    for (int bb = 0; bb < DELTA_BT; ++bb) {
                        const int b = b0 + bb;
                        v[r][bb] = scalar_t(0);
#if DELTA_TAGGED
                        raw[r][bb] = (unsigned long long)(t + 1) << 32;  // tag matches, value +0
                        if (p < K && b < B) {
                            if (p < I)
                                v[r][bb] = __ldg(dx_t + (long long)b * I + p);
                            else
                                raw[r][bb] = delta_peek(xch_t + (long long)b * H + (p - I));
                        }
#else
                        if (p < K && b < B)
                            v[r][bb] = p < I ? __ldg(dx_t + (long long)b * I + p) : evsnn_ldcg(dh_t + (long long)b * H + (p - I));
#endif
                    }
                }
#if DELTA_TAGGED
#pragma unroll
                for (int r = 0; r < DELTA_PER; ++r) {
                    const int p = base + r * DELTA_BLOCK + tid;
#pragma unroll
                    for (int bb = 0; bb < DELTA_BT; ++bb) {
                        if (p >= I && p < K && b0 + bb < B) {
                            while ((unsigned int)(raw[r][bb] >> 32) != (unsigned int)(t + 1))
                                raw[r][bb] = delta_peek(xch_t + (long long)(b0 + bb) * H + (p - I));
                            v[r][bb] = __uint_as_float((unsigned int)(raw[r][bb] & 0xffffffffull));
                        }
                    }
                }
#endif
                unsigned int ballot[DELTA_PER];
#pragma unroll
                for (int r = 0; r < DELTA_PER; ++r) {
#pragma unroll
                    for (int bb = 0; bb < DELTA_BT; ++bb) active[r] = active[r] || v[r][bb] != scalar_t(0);
                    ballot[r] = __ballot_sync(EVSNN_FULL_MASK, active[r]);
                    if (lane == 0) s_wcount[r * DELTA_WARPS + warp] = __popc(ballot[r]);
                }
                __syncthreads();
                // Compacted order: (r, warp, lane) — fixed, so the sums below are deterministic.
                int n = 0;
                int before[DELTA_PER];
#pragma unroll
                for (int r = 0; r < DELTA_PER; ++r) before[r] = 0;
                for (int g = 0; g < DELTA_PER * DELTA_WARPS; ++g) {
                    const int c = s_wcount[g];
#pragma unroll
                    for (int r = 0; r < DELTA_PER; ++r) before[r] += g < r * DELTA_WARPS + warp ? c : 0;
                    n += c;
                }
#pragma unroll
                for (int r = 0; r < DELTA_PER; ++r) {
                    if (active[r]) {
                        const int pos = before[r] + __popc(ballot[r] & evsnn_lanemask_lt());
                        s_idx[pos] = base + r * DELTA_BLOCK + tid;
#pragma unroll
                        for (int bb = 0; bb < DELTA_BT; ++bb) s_val[bb][pos] = v[r][bb];
                    }
                }
                __syncthreads();
                if (own) {
#pragma unroll 4
                    for (int q = slot; q < n; q += slots) {
                        scalar_t w[4];
                        delta_load4(wp + ((long long)s_idx[q] * H + jj) * 4, w);
#pragma unroll
                        for (int bb = 0; bb < DELTA_BT; ++bb) {
                            const scalar_t d = s_val[bb][q];
#pragma unroll
                            for (int s = 0; s < 4; ++s) acc[bb][s] += w[s] * d;
                        }
                    }
                }
                __syncthreads();  // the next chunk rewrites s_idx, s_val, s_wcount
            }

#pragma unroll
            for (int bb = 0; bb < DELTA_BT; ++bb) {
                const int b = b0 + bb;
                if (b < B) {  // uniform over the block
#pragma unroll
                    for (int s = 0; s < 4; ++s) {
                        scalar_t a = acc[bb][s];
                        // Lanes lane and lane ^ off hold the same unit when off >= U (U divides 32).
                        for (int off = 16; off >= U; off >>= 1) a += __shfl_xor_sync(EVSNN_FULL_MASK, a, off);
                        if (tid % group < U) s_part[((tid / group) * 4 + s) * U + uj] = a;
                    }
                    __syncthreads();
                    for (int q = tid; q < 4 * U; q += DELTA_BLOCK) {
                        const int s = q / U, u = q % U;
                        scalar_t sum = scalar_t(0);
                        for (int g = 0; g < ngroups; ++g) sum += s_part[(g * 4 + s) * U + u];
                        s_red[s * U + u] = sum;
                    }
                    __syncthreads();
                    if (tid < U && j0 + tid < H) {
                        const long long o = (long long)b * H + j0 + tid;
                        scalar_t m[4];
#pragma unroll
                        for (int s = 0; s < 4; ++s) {
                            m[s] = own_m[bb][s] + s_red[s * U + tid];
                            m_work[o * 4 + s] = m[s];
                            if (m_all != nullptr) m_all[(t * BH + o) * 4 + s] = m[s];
                        }
#if DELTA_LSTM
                        scalar_t c;
                        const scalar_t h = delta_lstm_step(m, own_hc[bb], c);
                        c_work[o] = c;
                        if (c_all != nullptr) c_all[t * BH + o] = c;
#else
                        const scalar_t h = delta_gru_step(m, own_hc[bb]);
#endif
                        h_work[o] = h;
                        out[t * BH + o] = h;
                        if (t + 1 < T) {
                            scalar_t hh = own_hh[bb];
                            const scalar_t d = delta_encode(h, hh, theta_h, inclusive);
                            dh[(t + 1) * BH + o] = d;
                            hh_work[o] = hh;
#if DELTA_TAGGED
                            delta_publish(xch + ((t + 1) & 1) * BH + o, (unsigned int)(t + 2), d);
#endif
                        }
                    }
                }
            }
        }
#if !DELTA_TAGGED
        if (t + 1 < T) evsnn_grid_barrier(counter, target);
#endif
    }
}

// Persistent reverse-time backward, one grid barrier per step (symmetric sparse BPTT, Chen et al.).
// Phase A (elementwise, owner of each unit): δM_t = gate gradients + δM_{t+1}, stored for the
//   weight-gradient GEMMs.
// Phase B (after the barrier): e = W_hhᵀ δM_t only for the hidden columns k with Δh_t[b, k] ≠ 0 —
//   the columns the forward pass read — each a dot product over the packed column k; it reaches
//   h_{t−1} and ĥ_{t−1} through the delta encoder. Inactive columns pass nothing (their mask is 0).
// The lam_* buffers carry the adjoints between steps and end holding the initial-state gradients.
extern "C" __global__ void __launch_bounds__(DELTA_BLOCK, 1)
    delta_backward(const scalar_t* __restrict__ g_out, const scalar_t* __restrict__ g_dh,
                   const scalar_t* __restrict__ m_all, const scalar_t* __restrict__ out, const scalar_t* __restrict__ h0,
                   const scalar_t* __restrict__ c_all, const scalar_t* __restrict__ c0, const scalar_t* __restrict__ dh,
                   const scalar_t* __restrict__ wph, scalar_t* __restrict__ lam_h, scalar_t* __restrict__ lam_hh,
                   scalar_t* __restrict__ lam_m, scalar_t* __restrict__ lam_c, scalar_t* dm_all, unsigned int* counter,
                   int T, int B, int H, int U) {
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int j0 = blockIdx.x * U;
    const long long BH = (long long)B * H;
    unsigned int target = 0;

    for (int t = T - 1; t >= 0; --t) {
        for (int q = tid; q < B * U; q += DELTA_BLOCK) {
            const int u = j0 + q % U;
            if (u >= H) continue;
            const long long o = (long long)(q / U) * H + u;
            const scalar_t lh = lam_h[o] + g_out[t * BH + o];
            scalar_t m[4], g[4];
#pragma unroll
            for (int s = 0; s < 4; ++s) m[s] = m_all[(t * BH + o) * 4 + s];
#if DELTA_LSTM
            const scalar_t cprev = t > 0 ? c_all[(t - 1) * BH + o] : c0[o];
            scalar_t lc = lam_c[o];
            delta_lstm_adjoint(m, c_all[t * BH + o], cprev, lh, lc, g);
            lam_c[o] = lc;
            lam_h[o] = scalar_t(0);  // h_{t−1} reaches step t only through Δh_t (phase B)
#else
            const scalar_t hprev = t > 0 ? out[(t - 1) * BH + o] : h0[o];
            // The direct path h_{t−1} → h_t; phase B adds the delta path.
            lam_h[o] = delta_gru_adjoint(m, hprev, lh, g);
#endif
#pragma unroll
            for (int s = 0; s < 4; ++s) {
                const scalar_t d = g[s] + lam_m[o * 4 + s];
                lam_m[o * 4 + s] = d;
                dm_all[(t * BH + o) * 4 + s] = d;
            }
        }
        evsnn_grid_barrier(counter, target);

        for (int q = warp; q < B * U; q += DELTA_WARPS) {
            const int k = j0 + q % U;
            if (k >= H) continue;
            const int b = q / U;
            const long long o = (long long)b * H + k;
            if (dh[t * BH + o] == scalar_t(0)) continue;  // inactive column: mask 0, no gradient
            const scalar_t* wcol = wph + (long long)k * H * 4;
            const scalar_t* dmv = dm_all + (t * BH + (long long)b * H) * 4;
            scalar_t e = scalar_t(0);
#pragma unroll 4
            for (int u = lane; u < H; u += 32) {
                scalar_t w[4], d[4];
                delta_load4(wcol + (long long)u * 4, w);
                delta_load4_cg(dmv + (long long)u * 4, d);
                e += w[0] * d[0] + w[1] * d[1] + w[2] * d[2] + w[3] * d[3];
            }
            e = evsnn_warp_sum(e);
            if (lane == 0) {
                if (g_dh != nullptr) e += g_dh[t * BH + o];
                lam_h[o] += e + lam_hh[o];
                lam_hh[o] = -e;
            }
        }
        __syncthreads();  // phase A of step t − 1 reads lam_h written by other warps of this block
    }
}
