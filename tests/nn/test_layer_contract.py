"""The layers implement the contract the stack and `Stream` run them through (evsnn.nn.contract),
and every family's record names modules and functions that exist."""

from __future__ import annotations

import pytest

import evsnn
from evsnn.nn.contract import StackLayer, StreamLayer
from evsnn.ops import dispatch
from evsnn.ops.family import FAMILIES
from evsnn.streaming import SUPPORTED_LAYERS

SEQUENCE_LAYERS = [evsnn.ALIF, evsnn.EGRU, evsnn.DeltaGRU, evsnn.DeltaLSTM]


def _build(cls: type):
    return cls(3, 4)


@pytest.mark.parametrize("cls", SUPPORTED_LAYERS, ids=lambda c: c.__name__)
def test_streamed_layers_implement_the_stream_contract(cls: type) -> None:
    layer = _build(cls)
    assert isinstance(layer, StreamLayer)
    family = layer.neuron_family
    assert family is None or FAMILIES[family.name] is family


@pytest.mark.parametrize("cls", SEQUENCE_LAYERS, ids=lambda c: c.__name__)
def test_sequence_layers_implement_the_stack_contract(cls: type) -> None:
    assert isinstance(_build(cls), StackLayer)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_records_resolve(name: str) -> None:
    record = FAMILIES[name]
    assert record.scan("torch") is record.reference
    assert dispatch.FAMILIES == tuple(FAMILIES)
    for backend in record.scans:
        assert backend in dispatch.BACKENDS
        assert callable(record.scan(backend)) and callable(record.check(backend))
    runner = record.runner_type()
    for method in ("from_scan_arguments", "load", "state", "stream_step", "stream_chunk"):
        assert callable(getattr(runner, method))
    assert record.auto_rules(True) is record.auto_training
    assert record.auto_rules(False) is record.auto_inference
