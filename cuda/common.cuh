// Shared device helpers of every evsnn kernel: a grid-wide barrier for persistent kernels,
// the surrogate pseudo-derivatives g(x) of SPEC.md §1 (all kinds, optionally truncated),
// cache-bypassing loads for data that other blocks wrote in the same launch, warp helpers.
//
// Compiled with -Dscalar_t=float|double by evsnn/ops/cupy_runtime.py. Include it with
//   #include "common.cuh"
// (the runtime inlines local includes once).
#pragma once

#ifndef scalar_t
#error "scalar_t must be defined (-Dscalar_t=float or -Dscalar_t=double)"
#endif

#define EVSNN_FULL_MASK 0xffffffffu

// ---------------------------------------------------------------------------------------------
// Grid barrier for a persistent kernel (all blocks co-resident: grid <= number of SMs, or a
// cooperative launch). `counter` points to one unsigned int that is ZERO before the launch
// (a fresh torch.zeros allocation) and only ever grows; `target` is a per-block local that
// starts at 0. Each call waits until every block has arrived that many times, so the counter
// never needs resetting within a launch (2^32 / gridDim arrivals before it wraps).
//
// Ordering: __syncthreads makes the block's writes happen-before thread 0's arrival, which is an
// atomic add with acquire-release semantics at GPU scope (cumulative: it publishes what the barrier
// ordered before it); thread 0 then spins with ACQUIRE loads, and the closing __syncthreads
// hands the acquired order to the whole block (a __threadfence, i.e. fence.sc.gpu, before the add
// and after the spin would order more than a barrier needs).
// Readers of data written by OTHER blocks should still load it with evsnn_ldcg (bypasses the
// non-coherent L1).
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void evsnn_grid_barrier(unsigned int* counter, unsigned int& target) {
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
        target += gridDim.x * gridDim.y * gridDim.z;
        // acq_rel: the last block to arrive sees every other arrival in the add itself and must
        // acquire there, since it skips the spin.
        unsigned int arrived;
        asm volatile("atom.add.acq_rel.gpu.global.u32 %0, [%1], 1;" : "=r"(arrived) : "l"(counter) : "memory");
        arrived += 1u;
        while (arrived < target) {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(arrived) : "l"(counter) : "memory");
        }
    }
    __syncthreads();
}

// Load through L2 only: the value may have been written by another block of this launch.
__device__ __forceinline__ float evsnn_ldcg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ double evsnn_ldcg(const double* p) { return __ldcg(p); }

// ---------------------------------------------------------------------------------------------
// Warp helpers
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ scalar_t evsnn_warp_sum(scalar_t v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(EVSNN_FULL_MASK, v, off);
    return v;
}

__device__ __forceinline__ unsigned int evsnn_lanemask_lt() {
    unsigned int mask;
    asm("mov.u32 %0, %%lanemask_lt;" : "=r"(mask));
    return mask;
}

__device__ __forceinline__ scalar_t evsnn_sigmoid(scalar_t x) { return scalar_t(1) / (scalar_t(1) + exp(-x)); }

// ---------------------------------------------------------------------------------------------
// Surrogates (SPEC.md §1). The kind codes follow Surrogate.kernel_spec() names:
//   "triangle"       (width ε, peak γ)               g = γ max(0, 1 − |x|/ε)
//   "gaussian"       (σ, γ)                          g = γ N(x; 0, σ²)
//   "multi_gaussian" (σ, h, s, γ)                    g = γ[(1+h)N(x;0,σ²) − h N(x;σ,(sσ)²) − h N(x;−σ,(sσ)²)]
//   "atan"           (α)                             g = (α/2) / (1 + (π α x / 2)²)
//   "fast_sigmoid"   (k)                             g = 1 / (k|x| + 1)²
// A truncated surrogate (kernel_spec params with one extra trailing value ε) passes
// trunc = ε > 0: g(x) = 0 for |x| >= ε. trunc <= 0 means no truncation.
// The host packs a spec as (kind, p0, p1, p2, p3, trunc), unused params 0.
// ---------------------------------------------------------------------------------------------
#define EVSNN_SG_TRIANGLE 0
#define EVSNN_SG_GAUSSIAN 1
#define EVSNN_SG_MULTI_GAUSSIAN 2
#define EVSNN_SG_ATAN 3
#define EVSNN_SG_FAST_SIGMOID 4

#define EVSNN_PI 3.14159265358979323846
#define EVSNN_INV_SQRT2PI 0.39894228040143267794

__device__ __forceinline__ scalar_t evsnn_normal_pdf(scalar_t x, scalar_t mu, scalar_t sigma) {
    const scalar_t u = (x - mu) / sigma;
    return exp(scalar_t(-0.5) * u * u) * scalar_t(EVSNN_INV_SQRT2PI) / sigma;
}

__device__ __forceinline__ scalar_t evsnn_surrogate_grad(int kind, scalar_t p0, scalar_t p1, scalar_t p2, scalar_t p3,
                                                         scalar_t trunc, scalar_t x) {
    if (trunc > scalar_t(0) && !(fabs(x) < trunc)) return scalar_t(0);
    switch (kind) {
        case EVSNN_SG_TRIANGLE: {
            const scalar_t v = scalar_t(1) - fabs(x) / p0;
            return v > scalar_t(0) ? p1 * v : scalar_t(0);
        }
        case EVSNN_SG_GAUSSIAN:
            return p1 * evsnn_normal_pdf(x, scalar_t(0), p0);
        case EVSNN_SG_MULTI_GAUSSIAN: {
            const scalar_t wide = p2 * p0;
            return p3 * ((scalar_t(1) + p1) * evsnn_normal_pdf(x, scalar_t(0), p0) - p1 * evsnn_normal_pdf(x, p0, wide) -
                         p1 * evsnn_normal_pdf(x, -p0, wide));
        }
        case EVSNN_SG_ATAN: {
            const scalar_t u = scalar_t(EVSNN_PI) * p0 * x / scalar_t(2);
            return (p0 / scalar_t(2)) / (scalar_t(1) + u * u);
        }
        case EVSNN_SG_FAST_SIGMOID: {
            const scalar_t d = p0 * fabs(x) + scalar_t(1);
            return scalar_t(1) / (d * d);
        }
        default:
            return scalar_t(0);
    }
}
