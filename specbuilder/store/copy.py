"""Copying every model and run of one store into another (``specbuilder store copy SRC DST``).

Each entry keeps its id, name, times, status and training record, and its weights byte for
byte: after the copy the weights are read back from the target and their SHA-256 compared with
the source's, tensor by tensor. An entry goes over whole or not at all (``ModelStore.adopt``), so
a copy that is interrupted leaves only complete entries behind, and running it again copies the
rest: an id already in the target is verified, not copied twice. A run still going in the source
is left out (it belongs to the replica running it); copy again once it has ended.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from specbuilder.store.model_store import ModelStore
from specbuilder.store.records import FINAL_STATUSES, ModelRecord, StoreError

COMPARED = {"id", "name", "status", "num_params", "spec_hash", "created", "updated", "dataset", "reason", "has_weights",
            "spec", "config", "history", "stats"}
"""The fields a copy must keep (``weights_bytes`` is the target's own size of the same weights)."""


class CopyMismatch(StoreError):
    """An entry in the target differs from the source's: another entry under the same id, or damaged weights."""


@dataclass
class CopyReport:
    """What a copy did, by model id."""

    copied: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    """Already in the target, found equal."""
    running: list[str] = field(default_factory=list)
    """Still running in the source: left out."""


def digests(weights: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """SHA-256 of each tensor's bytes, by key."""
    return {key: hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest() for key, tensor in weights.items()}


def _check_same(record: ModelRecord, source: ModelStore, target: ModelStore) -> None:
    copy = target.get(record.id)
    changed = sorted(key for key in COMPARED if getattr(copy, key) != getattr(record, key))
    if changed:
        raise CopyMismatch(f"model {record.id} differs between the stores in {', '.join(changed)}; remove it from the target "
                           "(specbuilder models rm) and copy again")
    if record.has_weights and digests(source.weights(record.id)) != digests(target.weights(record.id)):
        raise CopyMismatch(f"the weights of model {record.id} differ between the stores; remove it from the target and copy again")


def copy_store(source: ModelStore, target: ModelStore, progress: Callable[[ModelRecord, str], None] | None = None) -> CopyReport:
    """Copy every final entry of ``source`` into ``target`` and verify it; ``progress(record, what)``
    hears of each ("copied", "verified", "running"). ``CopyMismatch`` stops at an entry that differs."""
    report = CopyReport()
    for record in source.list():
        if record.status not in FINAL_STATUSES:
            report.running.append(record.id)
            outcome = "running"
        else:
            if target.exists(record.id):
                outcome = "verified"
            else:
                target.adopt(record, source.weights(record.id) if record.has_weights else None)
                outcome = "copied"
            _check_same(record, source, target)
            getattr(report, outcome).append(record.id)
        if progress is not None:
            progress(record, outcome)
    return report


__all__ = ["CopyMismatch", "CopyReport", "copy_store", "digests"]
