"""Text reports the train, eval and models commands share: epoch tables, layer tables, records.

Inputs may be pydantic objects (the core's or the client's) or the plain dicts the store keeps,
so a local run, a remote run and a stored record print the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from specbuilder.cli.common import table
from specbuilder.spec import parse_spec


def as_dicts(items: Iterable[BaseModel | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each item as a plain dict (pydantic models dumped, mappings copied)."""
    return [item.model_dump() if isinstance(item, BaseModel) else dict(item) for item in items]


def number(value: float | None, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits; ``-`` for None."""
    if value is None:
        return "-"
    return str(value) if isinstance(value, float) and not math.isfinite(value) else f"{value:.{digits}g}"


def percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal; ``-`` for None."""
    return "-" if value is None else f"{100 * value:.1f}%"


def history_table(history: Sequence[BaseModel | Mapping[str, Any]]) -> str:
    """One row per epoch: loss, validation loss, accuracy, learning rate, seconds."""
    rows = [("epoch", "loss", "val_loss", "accuracy", "lr", "seconds")]
    for epoch in as_dicts(history):
        rows.append((
            str(epoch["epoch"]), number(epoch["loss"]), number(epoch.get("val_loss")), percent(epoch.get("accuracy")),
            number(epoch.get("lr"), 3), f"{epoch.get('seconds', 0.0):.2f}",
        ))
    return table(rows)


def stats_table(stats: Sequence[BaseModel | Mapping[str, Any]], grad_norms: Mapping[str, float | None] | None = None) -> str:
    """One row per monitored layer: dead, saturated and zero fractions, moments, range, gradient norm.

    ``grad_norms`` (by layer name) fills in gradient norms the statistics lack, such as those of
    a training run's last window next to its final, forward-only statistics.
    """
    rows = [("#", "layer", "kind", "dead", "saturated", "zero", "mean", "std", "min", "max", "grad norm")]
    for layer in as_dicts(stats):
        grad = layer.get("grad_norm")
        if grad is None and grad_norms:
            grad = grad_norms.get(layer["name"])
        rows.append((
            str(layer["index"]), layer["name"], layer["kind"], percent(layer["dead_fraction"]),
            percent(layer["saturated_fraction"]), percent(layer["zero_fraction"]), number(layer.get("mean")),
            number(layer.get("std")), number(layer.get("min")), number(layer.get("max")), number(grad),
        ))
    return table(rows)


def last_accuracy(history: Sequence[BaseModel | Mapping[str, Any]]) -> str:
    """The last epoch's validation accuracy as a percentage; ``-`` without one."""
    epochs = as_dicts(history)
    return percent(epochs[-1].get("accuracy")) if epochs else "-"


def when(value: Any) -> str:
    """A record's timestamp in local time, to the second; ``-`` when unknown."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def record_text(record: BaseModel) -> str:
    """A stored model or run (the store's ``ModelRecord``, or the client's with the spec as a dict) for people to read."""
    fields = record.model_dump()
    spec = parse_spec(record.spec, max_params=None)  # type: ignore[attr-defined]
    status = fields["status"] + (f" ({fields['reason']})" if fields.get("reason") else "")
    dataset = fields.get("dataset")
    lines = [
        f"id:       {fields['id']}",
        f"name:     {fields['name']}",
        f"status:   {status}",
        f"dataset:  {json.dumps(dataset) if isinstance(dataset, dict) else dataset or '-'}",
        f"created:  {when(fields.get('created'))}",
        f"updated:  {when(fields.get('updated'))}",
        f"weights:  {'yes' if fields['has_weights'] else 'no'}",
        "",
        f"spec {spec.name} ({fields['spec_hash'][:12]}):",
        spec.summary(),
        "",
        "config:" if fields["config"] else "config: (none)",
        *(f"  {key}: {json.dumps(value)}" for key, value in sorted(fields["config"].items())),
    ]
    if fields["history"]:
        lines += ["", "history:", history_table(fields["history"])]
    if fields["stats"]:
        lines += ["", "final statistics:", stats_table(fields["stats"])]
    return "\n".join(lines)


__all__ = ["as_dicts", "history_table", "last_accuracy", "number", "percent", "record_text", "stats_table", "when"]
