"""The server's answers built from core objects: store records, training events, a compiled
model's layers (the registries' answers are ``catalog``'s).

Statistics and epoch metrics have their one protobuf form in ``specbuilder_wire.results``; a
store record keeps them as the plain dicts they were saved as, read back into those types here.
"""

from __future__ import annotations

from collections.abc import Iterable

from specbuilder.proto import spec_to_proto
from specbuilder.spec import Node
from specbuilder.store import ModelRecord, ModelSummary
from specbuilder.training import Event
from specbuilder_wire.results import EpochMetrics, LayerStats, status_value
from specbuilder_wire.v1 import service_pb2
from specbuilder_wire.values import config_to_proto


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
