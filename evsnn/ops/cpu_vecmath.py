"""``exp``, ``sigmoid`` and ``tanh`` that LLVM can vectorise inside the fused numba kernels.

Numba lowers ``np.exp``/``np.tanh`` to scalar libm calls, and without Intel's SVML no loop
that calls them is vectorised: in the EGRU training kernel those calls cost more than all the
rest of the gate math. These are written in plain arithmetic instead (Cody–Waite range
reduction, then Cephes' polynomial for ``float32`` and Padé form for ``float64``, scaled by
``2ⁿ`` built from the exponent bits), so a loop over units that uses them becomes SIMD code.
Each computes in its argument's dtype; measured over 10⁷ arguments spread over |x| up to ~10³,
their relative error stays below 2.5 machine epsilons in ``float32`` and ``float64`` (torch's
float32 ``sigmoid``: 1.2).

``sigmoid`` and ``tanh`` keep IEEE behaviour at the edges as the reference's torch ops do:
NaN gives NaN, ``±inf`` gives the limits (``sigmoid(−inf) = 0``, ``tanh(±inf) = ±1``).

A kernel that calls them must be compiled with ``error_model="numpy"`` (the default Python
error model guards each division with a branch, which stops vectorisation) and without
``reassoc`` in its fastmath flags where they are inlined: reassociation may fold the two-part
``ln 2`` of the range reduction into one constant and lose its precision. They are numba
overloads, registered by `install` (which each kernel module calls before compiling, so that
importing a backend module does not import numba): calling them from plain Python is an error.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["exp_nonpos", "install", "sigmoid", "tanh"]


def exp_nonpos(u):  # pragma: no cover - replaced by the overload in compiled code
    """``exp(u)`` for ``u ≤ 0`` (or NaN) in ``u``'s dtype; compiled code only."""
    raise NotImplementedError("exp_nonpos runs inside numba-compiled code only")


def sigmoid(x):  # pragma: no cover
    """``1 / (1 + exp(−x))`` in ``x``'s dtype; compiled code only."""
    raise NotImplementedError("sigmoid runs inside numba-compiled code only")


def tanh(x):  # pragma: no cover
    """``tanh(x)`` in ``x``'s dtype; compiled code only."""
    raise NotImplementedError("tanh runs inside numba-compiled code only")


def _exp_nonpos_f32():
    f = np.float32
    # Below ``lo`` the result is subnormal: returned as 0 (an absolute error under 1.2e-38).
    lo, log2e, half, one, zero = f(-87.33654), f(1.4426950408889634), f(0.5), f(1.0), f(0.0)
    ln2_hi, ln2_lo = f(0.693359375), f(-2.12194440e-4)
    p0, p1, p2, p3, p4, p5 = (
        f(1.9875691500e-4), f(1.3981999507e-3), f(8.3334519073e-3),
        f(4.1665795894e-2), f(1.6666665459e-1), f(5.0000001201e-1),
    )  # fmt: skip

    def impl(u):  # pragma: no cover - numba
        uc = u if u >= lo else lo  # NaN and −inf too: finite work, the result is chosen at the end
        n = np.floor(uc * log2e + half)
        r = uc - n * ln2_hi
        r = r - n * ln2_lo
        p = p0 * r + p1
        p = p * r + p2
        p = p * r + p3
        p = p * r + p4
        p = p * r + p5
        e = p * (r * r) + r + one
        scale = np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)
        e = e * scale
        return e if u >= lo else (zero if u < lo else u)

    return impl


def _exp_nonpos_f64():
    lo, log2e = -708.3964185322641, 1.4426950408889634
    ln2_hi, ln2_lo = 6.93145751953125e-1, 1.42860682030941723212e-6
    p0, p1, p2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1
    q0, q1, q2, q3 = 3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1, 2.0

    def impl(u):  # pragma: no cover - numba
        uc = u if u >= lo else lo
        n = np.floor(uc * log2e + 0.5)
        r = uc - n * ln2_hi
        r = r - n * ln2_lo
        rr = r * r
        px = r * ((p0 * rr + p1) * rr + p2)
        e = px / (((q0 * rr + q1) * rr + q2) * rr + q3 - px)
        e = 1.0 + 2.0 * e
        scale = np.int64((np.int64(n) + np.int64(1023)) << np.int64(52)).view(np.float64)
        e = e * scale
        return e if u >= lo else (0.0 if u < lo else u)

    return impl


def _tanh_f32():
    f = np.float32
    one, two, zero, small = f(1.0), f(2.0), f(0.0), f(0.625)
    q0, q1, q2, q3, q4 = (f(-5.70498872745e-3), f(2.06390887954e-2), f(-5.37397155531e-2),
                          f(1.33314422036e-1), f(-3.33332819422e-1))  # fmt: skip

    def impl(x):  # pragma: no cover - numba
        a = abs(x)
        e = exp_nonpos(-two * a)
        big = (one - e) / (one + e)
        big = big if x >= zero else -big
        # Near 0, 1 − e cancels: an odd polynomial keeps the relative accuracy; as a product with
        # x it keeps the sign of a zero.
        z = x * x
        p = (((q0 * z + q1) * z + q2) * z + q3) * z + q4
        return x * (p * z + one) if a < small else big

    return impl


def _tanh_f64():
    p0, p1, p2 = -9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3
    q0, q1, q2 = 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3

    def impl(x):  # pragma: no cover - numba
        a = abs(x)
        e = exp_nonpos(-2.0 * a)
        big = (1.0 - e) / (1.0 + e)
        big = big if x >= 0.0 else -big
        z = x * x
        small = x * (z * (((p0 * z + p1) * z + p2) / (((z + q0) * z + q1) * z + q2)) + 1.0)
        return small if a < 0.625 else big

    return impl


def _sigmoid_impl(f):
    one, zero = f(1.0), f(0.0)

    def impl(x):  # pragma: no cover - numba
        # exp of −|x| only: it cannot overflow, and for x < 0 the result e / (1 + e) keeps its
        # relative accuracy where 1 − sigmoid(−x) would cancel.
        e = exp_nonpos(-abs(x))
        s = one / (one + e)
        return s if x >= zero else e * s

    return impl


@functools.cache
def install() -> bool:
    """Register the compiled forms with numba (once per process; ``False`` without numba). Each
    kernel module calls it before compiling a kernel that uses them, so that importing a backend
    module does not import numba."""
    try:  # numba is optional (the ``cpu`` extra); without it the kernels are never compiled
        from numba import types
        from numba.extending import overload
    except ImportError:  # pragma: no cover
        return False

    # Compiled as functions of their own (LLVM inlines them into the calling loop), with no
    # reassociation whatever the caller's flags, and numpy's error model so no branch guards a
    # division.

    def _compiled_apart(fn):
        return overload(fn, jit_options={"fastmath": {"contract"}, "error_model": "numpy"}, inline="never")

    @_compiled_apart(exp_nonpos)
    def _ov_exp_nonpos(u):
        if u == types.float32:
            return _exp_nonpos_f32()
        if u == types.float64:
            return _exp_nonpos_f64()
        return None

    @_compiled_apart(sigmoid)
    def _ov_sigmoid(x):
        if x == types.float32:
            return _sigmoid_impl(np.float32)
        if x == types.float64:
            return _sigmoid_impl(np.float64)
        return None

    @_compiled_apart(tanh)
    def _ov_tanh(x):
        if x == types.float32:
            return _tanh_f32()
        if x == types.float64:
            return _tanh_f64()
        return None

    return True
