"""evsnn.data: digits sequences, spike encoders, the temporal-order task, tonic loaders on tiny files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evsnn import data

# ---------------------------------------------------------------- encoders (hand-computed truths)


def test_latency_encode_hand_values():
    x = torch.tensor([[1.0, 0.5, 0.0, 0.25]])
    s = data.latency_encode(x, 5)
    assert s.shape == (1, 5, 4)
    # step = round((1 - x) * 4): 0, 2, never (x = 0 is at the floor), 3
    expected = torch.zeros(1, 5, 4)
    expected[0, 0, 0] = 1
    expected[0, 2, 1] = 1
    expected[0, 3, 3] = 1
    assert torch.equal(s, expected)


def test_delta_encode_hand_values():
    x = torch.tensor([[0.0], [0.05], [0.2], [0.25], [0.0], [0.0]])
    # reference 0: 0.05 no, 0.2 fires + (ref 0.2), 0.25 no, 0.0 fires − (ref 0), 0 no
    assert data.delta_encode(x, 0.1).flatten().tolist() == [0, 0, 1, 0, -1, 0]


def test_rate_encode_probability_and_errors():
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([0.0, 0.3, 1.0])
    s = data.rate_encode(x, 4000, generator=g)
    assert s.shape == (4000, 3)
    rates = s.mean(0)
    assert rates[0] == 0 and rates[2] == 1 and abs(float(rates[1]) - 0.3) < 0.03
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        data.rate_encode(torch.tensor([1.5]), 3)
    with pytest.raises(TypeError, match="steps must be an int"):
        data.rate_encode(x, 2.0)
    with pytest.raises(ValueError, match="unknown encoding"):
        data.encode(x, "poisson")


# ---------------------------------------------------------------- digits


def test_digits_rows_match_sklearn_images():
    from sklearn.datasets import load_digits

    split = data.load_digits_sequences("rows", repeat=2, seed=0)
    x, y = split.train.tensors
    assert x.shape[1:] == (16, 8) and split.steps == 16 and split.n_features == 8
    assert len(split.train) + len(split.test) == 1797
    images = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)
    # every sample is one image shown row by row, each row twice
    match = (images.unsqueeze(0) == x[:5, ::2].unsqueeze(1)).flatten(2).all(-1)
    assert match.any(1).all()
    assert torch.equal(x[:, ::2], x[:, 1::2])
    # stratified: every class in the test split
    assert set(split.test.tensors[1].tolist()) == set(range(10))


def test_digits_pixels_permuted_and_spikes():
    pixels = data.load_digits_sequences("pixels").train.tensors[0]
    perm = data.load_digits_sequences("permuted").train.tensors[0]
    assert pixels.shape[1:] == (64, 1) and perm.shape == pixels.shape
    assert not torch.equal(pixels, perm)
    assert torch.equal(pixels.sort(1).values, perm.sort(1).values)  # same pixels, new order
    rate = data.load_digits_sequences("rows", repeat=3, spikes="rate").train.tensors[0]
    assert set(rate.unique().tolist()) <= {0.0, 1.0}
    lat = data.load_digits_sequences("rows", repeat=4, spikes="latency").train.tensors[0]
    assert lat.shape[1] == 32 and lat.view(-1, 8, 4, 8).sum(2).max() <= 1  # at most one spike per row window
    delta = data.load_digits_sequences("rows", spikes="delta", threshold=0.2).train.tensors[0]
    assert set(delta.unique().tolist()) <= {-1.0, 0.0, 1.0}
    with pytest.raises(ValueError, match="unknown digits order"):
        data.load_digits_sequences("columns")
    with pytest.raises(ValueError, match="repeat must be"):
        data.load_digits_sequences(repeat=0)


# ---------------------------------------------------------------- temporal-order task


def test_temporal_twins_have_identical_counts_and_differ_in_order():
    ds, orders = data.temporal_pattern_task(
        64, n_classes=4, channels_per_group=3, steps=30, burst_spikes=2, gap=4, noise_rate=0.0, seed=3
    )
    x, y = ds.tensors
    assert x.shape == (64, 30, 12) and orders[0] == (0, 1) and orders[1] == (1, 0)
    counts = x.sum(1)  # [N, channels]
    for a, b in ((0, 1), (2, 3)):
        ca, cb = counts[y == a], counts[y == b]
        # every sample of a twin pair has exactly the same per-channel spike counts
        assert torch.equal(ca, ca[:1].expand_as(ca)) and torch.equal(ca[:1], cb[:1])
    window = (30 - 4) // 2
    first = x[:, :window].sum(1)
    g0 = slice(0, 3)
    assert (first[y == 0][:, g0] == 2).all() and (first[y == 1][:, g0] == 0).all()


def test_temporal_count_classifier_at_chance_within_twins():
    from sklearn.linear_model import LogisticRegression

    ds, _ = data.temporal_pattern_task(400, n_classes=2, noise_rate=0.02, seed=0)
    x, y = ds.tensors
    counts = x.sum(1).numpy()
    order_feature = (x[:, :25].sum((1, 2)) - x[:, 35:].sum((1, 2))).numpy()  # sanity: order alone is informative
    clf = LogisticRegression(max_iter=500).fit(counts[:300], y[:300].numpy())
    assert clf.score(counts[300:], y[300:].numpy()) < 0.7
    first_half_channels = x[:, :25, :8].sum((1, 2)).numpy()
    assert ((first_half_channels > 12) == (y.numpy() == 0)).mean() > 0.95
    assert np.isfinite(order_feature).all()
    with pytest.raises(ValueError, match="must be even"):
        data.temporal_pattern_task(10, n_classes=3)


# ---------------------------------------------------------------- tonic loaders on tiny files


def _write_shd(root, split: str, n: int = 3) -> list[tuple[np.ndarray, np.ndarray, int]]:
    import h5py

    folder = root / "SHD"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        times = np.sort(rng.uniform(0, 0.05, size=20)).astype(np.float32)  # seconds
        units = rng.integers(0, 700, size=20).astype(np.uint16)
        samples.append((times, units, i % 20))
    with h5py.File(folder / f"shd_{split}.h5", "w") as f:
        vt = h5py.vlen_dtype(np.dtype("float32"))
        vu = h5py.vlen_dtype(np.dtype("uint16"))
        t = f.create_dataset("spikes/times", (n,), dtype=vt)
        u = f.create_dataset("spikes/units", (n,), dtype=vu)
        for i, (times, units, _) in enumerate(samples):
            t[i], u[i] = times, units
        f.create_dataset("labels", data=np.array([s[2] for s in samples], dtype=np.uint16))
        f.create_dataset("extra/keys", data=np.array([b"zero"] * 20))
        f.create_dataset("extra/speaker", data=np.zeros(n, dtype=np.uint16))
    return samples


def test_shd_reads_hdf5_through_tonic(tmp_path):
    samples = _write_shd(tmp_path, "train")
    ds = data.shd(tmp_path, train=True, time_window=10_000.0)
    assert len(ds) == 3
    for i, (times, units, label) in enumerate(samples):
        x, y = ds[i]
        assert int(y) == label and x.dtype == torch.float32 and x.shape[1] == 700
        assert x.sum() == len(times)  # every spike lands in one bin
        # hand-binned truth: 10 ms bins starting at the first spike
        t_us = times.astype(np.float64) * 1e6
        bins = ((t_us - t_us[0]) // 10_000).astype(int)
        for b, unit in zip(bins, units):
            if b < x.shape[0]:
                assert x[b, unit] >= 1
    assert isinstance(ds, __import__("tonic").datasets.SHD)


def test_dvs_gesture_reads_npy_through_tonic(tmp_path):
    folder = tmp_path / "DVSGesture" / "ibmGestureTest" / "user01_led"
    folder.mkdir(parents=True)
    # x, y, p, t(ms); tonic's n_time_bins bins are half-open, so the event at the last time (10 ms) is dropped
    ev = np.array([[0, 0, 1, 0], [127, 127, 0, 5], [64, 64, 1, 9], [3, 3, 1, 10]], dtype=np.float64)
    np.save(folder / "3.npy", ev)
    ds = data.dvs_gesture(tmp_path, train=False, n_time_bins=2, size=32)
    x, y = ds[0]
    assert y == 3 and x.shape == (2, 2 * 32 * 32) and float(x.sum()) == 3.0
    frames = x.view(2, 2, 32, 32)  # [T, P, H(y), W(x)]
    assert frames[0, 1, 0, 0] == 1  # (0,0) on, first half
    assert frames[1, 0, 31, 31] == 1 and frames[1, 1, 16, 16] == 1


def _nmnist_bytes(events: list[tuple[int, int, int, int]]) -> bytes:
    out = bytearray()
    for x, y, p, t in events:
        out += bytes([x, y, (p << 7) | ((t >> 16) & 127), (t >> 8) & 255, t & 255])
    return bytes(out)


def test_nmnist_reads_bin_through_tonic(tmp_path):
    folder = tmp_path / "NMNIST" / "Train" / "7"
    folder.mkdir(parents=True)
    (folder / "00001.bin").write_bytes(
        _nmnist_bytes([(1, 2, 1, 0), (33, 33, 0, 1000), (5, 6, 1, 1500), (9, 9, 1, 2000)])
    )
    ds = data.nmnist(tmp_path, train=True, n_time_bins=2)
    x, y = ds[0]
    assert y == 7 and x.shape == (2, 2 * 34 * 34) and float(x.sum()) == 3.0
    frames = x.view(2, 2, 34, 34)
    assert frames[0, 1, 2, 1] == 1 and frames[1, 1, 6, 5] == 1 and frames[1, 0, 33, 33] == 1


def test_loaders_never_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        data.shd(tmp_path, train=True)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        data.nmnist(tmp_path, train=False)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        data.dvs_gesture(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.shd(tmp_path / "nope")


def test_pad_collate_pads_and_reports_lengths():
    batch = [(torch.ones(3, 2), 1), (torch.full((1, 2), 2.0), 0)]
    x, y, lengths = data.pad_collate(batch)
    assert x.shape == (2, 3, 2) and y.tolist() == [1, 0] and lengths.tolist() == [3, 1]
    assert torch.equal(x[1, 1:], torch.zeros(2, 2)) and torch.equal(x[1, 0], torch.full((2,), 2.0))
    xt, _, _ = data.pad_collate(batch, time_first=True)
    assert torch.equal(xt, x.transpose(0, 1))
    with pytest.raises(ValueError, match="one F"):
        data.pad_collate([(torch.ones(3, 2), 0), (torch.ones(3, 4), 1)])
