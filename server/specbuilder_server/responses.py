"""The server's answers built from core objects: store records, training events, a compiled
model's layers, the activation registry.

Statistics and epoch metrics have their one protobuf form in ``specbuilder_wire.results``; a
store record keeps them as the plain dicts they were saved as, read back into those types here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from specbuilder.activations import ACTIVATIONS
from specbuilder.kinds import ActivationKind
from specbuilder.proto import spec_to_proto
from specbuilder.spec import ACTIVATION_MODELS, Node
from specbuilder.store import ModelRecord, ModelSummary
from specbuilder.training import Event
from specbuilder_wire.results import EpochMetrics, LayerStats, status_value
from specbuilder_wire.v1 import service_pb2
from specbuilder_wire.values import config_to_proto, encode_value


def model_summary(summary: ModelSummary) -> service_pb2.ModelRecord:
    """A store entry's summary (ListModels): spec, config, history and statistics left out."""
    message = service_pb2.ModelRecord(
        id=summary.id, name=summary.name, status=status_value(summary.status), num_params=summary.num_params,
        spec_hash=summary.spec_hash, dataset=summary.dataset if isinstance(summary.dataset, str) else "",
        reason=summary.reason or "", has_weights=summary.has_weights,
    )
    message.created.FromDatetime(summary.created)
    message.updated.FromDatetime(summary.updated)
    return message


def model_record(record: ModelRecord) -> service_pb2.ModelRecord:
    """A store entry in full (GetModel)."""
    message = model_summary(record)
    message.spec.CopyFrom(spec_to_proto(record.spec))
    for key, value in config_to_proto(record.config).items():
        message.config[key].CopyFrom(value)
    message.history.extend(EpochMetrics.model_validate(entry).to_proto() for entry in record.history)
    message.stats.extend(LayerStats.model_validate(layer).to_proto() for layer in record.stats)
    return message


def train_messages(run_id: str, events: Iterable[Event]) -> list[service_pb2.TrainEvent]:
    """A burst of training events as Train stream messages, each tagged with its run's id: started
    and finished one each, every stretch of epochs and statistics windows between them one progress."""
    messages: list[service_pb2.TrainEvent] = []
    progress: service_pb2.TrainProgress | None = None
    for event in events:
        if event.type in ("epoch", "stats"):
            if progress is None:
                message = service_pb2.TrainEvent(run_id=run_id)
                progress = message.progress
                messages.append(message)
            item = progress.items.add()
            if event.type == "epoch":
                item.epoch.CopyFrom(event.metrics.to_proto())
            else:
                item.stats.step = event.step
                item.stats.stats.extend(layer.to_proto() for layer in event.layers)
            continue
        progress = None
        if event.type == "started":
            messages.append(service_pb2.TrainEvent(run_id=run_id, started=service_pb2.TrainStarted(
                epochs=event.config.epochs, steps_per_epoch=event.steps_per_epoch,
                train_samples=event.train_samples, val_samples=event.val_samples,
            )))
        else:
            messages.append(service_pb2.TrainEvent(run_id=run_id, finished=service_pb2.TrainFinished(
                status=status_value(event.status), reason=event.reason, steps=event.steps,
                stats=[layer.to_proto() for layer in event.result.stats],
            )))
    return messages


def failed_event(run_id: str, reason: str, steps: int) -> service_pb2.TrainEvent:
    """The last event of a run that ended without its outcome stored: status FAILED and why."""
    return service_pb2.TrainEvent(run_id=run_id, finished=service_pb2.TrainFinished(status=service_pb2.RUN_STATUS_FAILED, reason=reason, steps=steps))


def layer_summary(node: Node) -> service_pb2.LayerSummary:
    """One row of a compiled model's layer table."""
    return service_pb2.LayerSummary(
        index=node.index, name=node.name, type=node.layer.type, path=node.path,
        output_shape=node.out_shape, num_params=node.num_params,
    )


def _constraint(schema: Mapping[str, Any]) -> str:
    bounds = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
    parts = [f"{word} {schema[key]:g}" for key, word in bounds if key in schema]
    if "enum" in schema:
        parts.append("one of " + ", ".join(repr(choice) for choice in schema["enum"]))
    return ", ".join(parts)


def activation_info(kind: ActivationKind) -> service_pb2.ActivationInfo:
    """One registry entry: names, parameters with their defaults and bounds, range at the defaults, flat region."""
    model = ACTIVATION_MODELS[kind.name]
    properties = model.model_json_schema()["properties"]
    defaults = {name: field.default for name, field in model.model_fields.items() if name in kind.params and not field.is_required()}
    parameters = []
    for name in kind.params:
        schema = properties[name]
        info = service_pb2.ParameterInfo(name=name, type=schema.get("type", ""), constraint=_constraint(schema))
        if name in defaults:
            info.default.CopyFrom(encode_value(defaults[name], name))
        parameters.append(info)
    low, high = kind.range_for(defaults)
    return service_pb2.ActivationInfo(
        name=kind.name, aliases=kind.aliases, summary=kind.summary, formula=kind.formula, parameters=parameters,
        range_min=low, range_max=high,
        flat_region=kind.flat.text if kind.flat else "",
    )


@functools.cache
def activations() -> service_pb2.ListActivationsResponse:
    """The whole registry, built once: it never changes while the server runs."""
    return service_pb2.ListActivationsResponse(activations=[activation_info(kind) for kind in ACTIVATIONS.values()])
