"""The vectorisable sigmoid/tanh of evsnn.ops.cpu_vecmath against torch's, float32 and float64: a few
machine epsilons of relative error over a wide range of arguments, torch's results at ±0, ±inf, NaN
and where the result saturates or underflows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

numba = pytest.importorskip("numba")

from evsnn.ops.cpu_vecmath import install, sigmoid, tanh  # noqa: E402

install()


@numba.njit(error_model="numpy", fastmath={"contract"})
def _apply(x, out_sigmoid, out_tanh):
    for j in range(x.shape[0]):
        out_sigmoid[j] = sigmoid(x[j])
        out_tanh[j] = tanh(x[j])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_match_torch(dtype):
    gen = np.random.default_rng(0)
    spread = np.concatenate([gen.standard_normal(20_000) * s for s in (1e-3, 0.3, 1.0, 4.0, 30.0, 300.0)])
    edges = [0.0, -0.0, np.inf, -np.inf, 800.0, -800.0]
    special = [np.nan, 1e-30, -1e-30, 0.625, -0.625, 88.0, -88.0, 100.0, -100.0]
    x = np.concatenate([edges, special, spread]).astype(dtype)
    got_sigmoid, got_tanh = np.empty_like(x), np.empty_like(x)
    _apply(x, got_sigmoid, got_tanh)
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    for got, fn in ((got_sigmoid, torch.sigmoid), (got_tanh, torch.tanh)):
        ref = fn(torch.from_numpy(x)).numpy()
        exact = fn(torch.from_numpy(x).double()).numpy()
        assert np.array_equal(np.isnan(got), np.isnan(ref))
        finite = ~np.isnan(ref)
        err = np.abs(got[finite].astype(np.float64) - exact[finite])
        # Relative where the result is a normal number; below that an absolute error of one tiny.
        assert np.all(err <= 3 * eps * np.abs(exact[finite]) + tiny), fn.__name__
        # The edges exactly as torch: signed zeros, limits at ±inf, saturation.
        n = len(edges)
        assert np.array_equal(got[:n], ref[:n]), fn.__name__
        assert np.array_equal(np.signbit(got[:n]), np.signbit(ref[:n])), fn.__name__
