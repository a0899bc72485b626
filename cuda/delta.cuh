// Helpers of the delta-cell kernels (SPEC.md §4) that are not shared with other families.
// Compiled with -Dscalar_t=float|double; included by delta.cu after common.cuh.
#pragma once

#ifndef scalar_t
#error "scalar_t must be defined (-Dscalar_t=float or -Dscalar_t=double)"
#endif

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

// The delta of a difference against its threshold (SPEC §4): strict keeps it unless |diff| <= theta,
// inclusive (the official DeltaRNN rule |diff| >= theta) unless |diff| < theta or diff == 0. Both are
// written as "drop if" so a NaN difference is kept, as the reference's diff * mask = NaN is.
__device__ __forceinline__ scalar_t delta_pass(scalar_t diff, scalar_t theta, int inclusive) {
    const scalar_t a = fabs(diff);
    const bool drop = inclusive ? (a < theta || diff == scalar_t(0)) : (a <= theta);
    return drop ? scalar_t(0) : diff;
}

__device__ __forceinline__ scalar_t delta_sigmoid(scalar_t x) { return scalar_t(1) / (scalar_t(1) + exp(-x)); }
