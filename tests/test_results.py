"""The result types everyone shares (``specbuilder_wire.results``): one class each, and a protobuf form that loses nothing."""

from __future__ import annotations

import math

import pytest

import specbuilder
import specbuilder.stats
import specbuilder.training
import specbuilder_client
from specbuilder.errors import SpecError
from specbuilder_wire.results import RUN_STATUSES, EpochMetrics, Histogram, LayerStats, Problem, status_name, status_value
from specbuilder_wire.v1 import service_pb2

HISTOGRAM = Histogram(scale="symlog", edges=[-1.0, 0.0, 2.5], counts=[3, 4])


def layer(**changes: object) -> LayerStats:
    fields: dict[str, object] = {
        "index": 2, "name": "act1", "kind": "relu", "count": 7, "mean": 0.25, "std": 1.5, "min": -1.0, "max": 2.5,
        "nan_count": 1, "inf_count": 0, "zero_fraction": 0.5, "saturated_fraction": 0.5, "dead_fraction": 0.25,
        "units": 4, "histogram": HISTOGRAM, "grad_norm": 0.125, "entropy": None, "max_probability": None,
    }
    return LayerStats(**{**fields, **changes})


@pytest.mark.parametrize("stats", [
    layer(),
    layer(mean=None, std=None, min=None, max=None, grad_norm=None, entropy=0.75, max_probability=0.5),
    layer(histogram=Histogram(scale="linear", edges=[0.0, 1.0], counts=[0]), grad_norm=0.0),
], ids=["trained", "no finite value, softmax-like", "zeros"])
def test_layer_stats_cross_the_wire_unchanged(stats: LayerStats) -> None:
    message = service_pb2.LayerStats.FromString(stats.to_proto().SerializeToString())
    assert LayerStats.from_proto(message) == stats


def test_moments_a_layer_could_not_have_travel_as_nan_and_optional_ones_unset() -> None:
    message = layer(mean=None, std=None, min=None, max=None, grad_norm=None).to_proto()
    assert all(math.isnan(getattr(message, key)) for key in ("mean", "std", "min", "max"))
    assert not any(message.HasField(key) for key in ("grad_norm", "entropy", "max_probability"))
    assert message.histogram.scale == "symlog" and message.units == 4


@pytest.mark.parametrize("metrics", [
    EpochMetrics(epoch=3, step=30, loss=0.5, val_loss=0.75, accuracy=0.875, lr=0.01, seconds=0.25),
    EpochMetrics(epoch=1, step=10, loss=math.inf, val_loss=None, accuracy=None, lr=0.1, seconds=0.5),
], ids=["validated", "diverged without validation"])
def test_epoch_metrics_cross_the_wire_unchanged(metrics: EpochMetrics) -> None:
    message = service_pb2.EpochMetrics.FromString(metrics.to_proto().SerializeToString())
    assert EpochMetrics.from_proto(message) == metrics
    assert message.HasField("val_loss") == (metrics.val_loss is not None)


def test_run_statuses_by_name_and_value() -> None:
    assert RUN_STATUSES == ("running", "completed", "diverged", "cancelled", "failed", "interrupted")
    for name in RUN_STATUSES:
        assert status_name(status_value(name)) == name
    assert status_value("completed") == service_pb2.RUN_STATUS_COMPLETED
    with pytest.raises(ValueError, match="unknown run status 'done'; use one of running, completed, diverged"):
        status_value("done")


def test_one_class_each_for_the_core_the_client_and_errors() -> None:
    assert specbuilder.stats.LayerStats is specbuilder_client.LayerStats is LayerStats
    assert specbuilder.stats.Histogram is specbuilder_client.Histogram is Histogram
    assert specbuilder.training.EpochMetrics is specbuilder_client.EpochMetrics is EpochMetrics
    assert specbuilder.Problem is specbuilder_client.Violation is Problem
    error = SpecError([Problem("layers[0].type", "is required", "missing"), Problem("", "too big", "too_large")])
    assert str(error) == "layers[0].type: is required\ntoo big"
