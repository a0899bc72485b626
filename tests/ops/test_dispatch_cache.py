"""dispatch.resolve is a cached lookup: an unchanged call runs no backend check, and every input
the decision depends on (EVSNN_BACKEND, dtype, training, a shape crossing an auto rule, autocast,
the registry) changes the key, so the decision is the one an uncached resolve would make."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch

import evsnn
from evsnn.ops import dispatch
from evsnn.surrogate import Triangle

CPU = torch.device("cpu")
# cpu_event wins "auto" for EGRU inference at B = 1, H = 1024 and declines B = 64, H = 64 and
# zoneout in inference (the measured table the cpu_event check reads; test_cpu_event checks it).
INFER = {"device": CPU, "dtype": torch.float32, "shape": (10, 1, 1024), "training": False, "surrogate": Triangle(0.3)}


@pytest.fixture
def counted(monkeypatch):
    """Replace every registered EGRU check by a counting wrapper of itself (registry writes empty
    the cache, so the first resolve afterwards decides afresh)."""
    dispatch._ensure_loaded("cpu_event")
    dispatch._ensure_loaded("cupy")
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    calls: list[tuple[str, dict]] = []
    for (family, name), backend in list(dispatch._REGISTRY.items()):
        if family != "egru":
            continue

        def check(_real=backend.check, _name=name, **config):
            calls.append((_name, config))
            return _real(**config)

        monkeypatch.setitem(dispatch._REGISTRY, (family, name), replace(backend, check=check))
    return calls


def _decide_uncached(family: str, requested: str, **config) -> str:
    dispatch._CACHE.clear()
    return dispatch.resolve(family, requested, **config).name


def test_unchanged_call_runs_no_check(counted):
    first = dispatch.resolve("egru", "auto", **INFER)
    assert first.name == "cpu_event" and counted, "the first call decides (and so checks)"
    n = len(counted)
    for steps in (10, 3, 500):  # the number of steps is not part of the decision
        again = dispatch.resolve("egru", "auto", **{**INFER, "shape": (steps, 1, 1024)})
        assert again is first
    assert len(counted) == n


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"training": True}, None),  # training has its own measured rule (whatever it says now)
        ({"shape": (10, 64, 1024)}, "torch"),  # batch above the measured crossover
        ({"shape": (10, 1, 64)}, "torch"),  # hidden below it
        ({"dtype": torch.float64}, "cpu_event"),
        ({"zoneout": 0.1}, "torch"),  # the event path has no zoneout
    ],
)
def test_changed_input_changes_the_key(counted, change, expected):
    assert dispatch.resolve("egru", "auto", **INFER).name == "cpu_event"
    n = len(counted)
    changed = {**INFER, **change}
    chosen = dispatch.resolve("egru", "auto", **changed).name
    assert len(counted) > n, "a changed input must be checked again"
    assert counted[-1][1]["auto"] is True and all(counted[-1][1][k] == v for k, v in change.items())
    expected = expected or chosen
    assert chosen == expected
    assert _decide_uncached("egru", "auto", **changed) == expected  # the cache agrees with a fresh decision
    n = len(counted)
    assert dispatch.resolve("egru", "auto", **changed).name == expected
    assert len(counted) == n


def test_environment_variable_is_part_of_the_key(counted, monkeypatch):
    assert dispatch.resolve("egru", "auto", **INFER).name == "cpu_event"
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert dispatch.resolve("egru", "auto", **INFER).name == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match="EVSNN_BACKEND='nonsense' is not one of"):
        dispatch.resolve("egru", "auto", **INFER)
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu_event")  # an explicit request: checked with auto=False
    n = len(counted)
    assert dispatch.resolve("egru", "auto", **{**INFER, "shape": (10, 64, 1024)}).name == "cpu_event"
    assert counted[n:] and counted[-1][1]["auto"] is False
    monkeypatch.delenv(dispatch.ENV_VAR)
    assert dispatch.resolve("egru", "auto", **INFER).name == "cpu_event"


def test_refusal_is_not_cached_as_a_choice(counted):
    """An explicit request that cannot run raises every time (it is not remembered as a backend)."""
    for _ in range(2):
        with pytest.raises(dispatch.BackendUnavailable, match="zoneout"):
            dispatch.resolve("egru", "cpu_event", **{**INFER, "zoneout": 0.1})


def test_autocast_is_part_of_the_key_and_warns_once_per_process(counted, monkeypatch):
    plain = dispatch.resolve("egru", "auto", **INFER)
    monkeypatch.setattr(dispatch, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="the cpu_event egru kernels have no torch.bfloat16 form"):
        with torch.autocast("cpu", torch.bfloat16):
            lowered = dispatch.resolve("egru", "auto", **INFER)
    assert lowered.name == "cpu_event" and lowered.fn is not plain.fn  # wrapped by run_lowered
    assert counted[-1][1]["dtype"] == torch.float32  # the kernel is asked for float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process, also on a cache hit
        with torch.autocast("cpu", torch.bfloat16):
            assert dispatch.resolve("egru", "auto", **INFER) is lowered
        assert dispatch.resolve("egru", "auto", **INFER) is plain
    # a fresh process (an emptied warned set) is told again, though the decision is cached
    monkeypatch.setattr(dispatch, "_WARNED", set())
    n = len(counted)
    with pytest.warns(RuntimeWarning, match="no torch.bfloat16 form"):
        with torch.autocast("cpu", torch.bfloat16):
            dispatch.resolve("egru", "auto", **INFER)
    assert len(counted) == n


def test_registry_write_empties_the_cache(counted, monkeypatch):
    assert dispatch.resolve("egru", "auto", **INFER).name == "cpu_event"

    def never(**_):
        return "stand-in declines"

    stand_in = replace(dispatch._REGISTRY[("egru", "cpu_event")], check=never)
    monkeypatch.setitem(dispatch._REGISTRY, ("egru", "cpu_event"), stand_in)
    assert dispatch.resolve("egru", "auto", **INFER).name == "torch"


def test_tensor_config_is_decided_each_time(monkeypatch):
    """A tensor-valued option (a learnable threshold) or an unhashable one cannot key the cache:
    decided afresh."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    config = {"device": CPU, "dtype": torch.float32, "theta_x": torch.tensor(0.1), "theta_h": 0.1}
    assert dispatch._cache_key("delta_gru", "auto", None, CPU, None, config) is None
    assert dispatch.resolve("delta_gru", "torch", **config).name == "torch"
    before = dict(dispatch._CACHE)
    unhashable = {"device": CPU, "dtype": torch.float32, "fixed_point": [3, 4]}
    assert dispatch.resolve("delta_gru", "torch", **unhashable).name == "torch"
    assert dispatch._CACHE == before


def test_layer_forward_checks_once(counted, single_thread):
    layer = evsnn.EGRU(3, 8)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        layer(x)
        n = len(counted)
        assert n > 0
        for _ in range(3):
            layer(torch.randn(7, 2, 3))
    assert len(counted) == n
    layer(x)  # training: a different key
    assert len(counted) > n
