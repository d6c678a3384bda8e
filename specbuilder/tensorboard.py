"""TensorBoard event files from a training run's results: epoch scalars and activation statistics.

``EventWriter`` writes one run into one directory, as it trains or afterwards; ``write_record``
writes what a stored model's record keeps. Tags and steps:

- ``epoch/loss``, ``epoch/val_loss``, ``epoch/accuracy``, ``epoch/lr``, ``epoch/seconds``: one
  point per epoch at step = the epoch (from 1); a metric an epoch lacks (None) is left out.
- ``train/LAYER/activations`` (histogram), ``train/LAYER/dead_fraction``,
  ``train/LAYER/saturated_fraction``, ``train/LAYER/grad_norm``: one statistics window of
  training (every ``stats_every`` steps) at step = its optimizer step.
- ``final/LAYER/...``, the same without ``grad_norm``: the trained model's statistics over the
  validation (else training) set, at step = the epochs finished.

Values take the formats of TensorBoard's own plugins. A scalar is a float32 tensor, as
``scalar_pb`` writes it (TensorBoard's data server reads scalars of no other type). A histogram is
the stored ``Histogram`` itself, nothing re-binned: a float64 tensor with one row ``[left edge,
right edge, count]`` per bin, its edges and counts exact; as in ``Histogram``, the end bins also
count the values beyond the outer edges.

Statistics and epoch metrics are read as mappings with the fields of ``specbuilder.stats.LayerStats``
and ``specbuilder.training.events.EpochMetrics``: those models themselves, the client's models of the
same name, or the plain dicts a model store keeps of them. torch is never imported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

Data = Mapping[str, Any] | BaseModel
"""A ``LayerStats`` or ``EpochMetrics``: the core's or the client's model, or the store's dict of one."""

EPOCH_SCALARS = ("loss", "val_loss", "accuracy", "lr", "seconds")
"""The epoch metrics written as ``epoch/NAME``."""
LAYER_SCALARS = ("dead_fraction", "saturated_fraction", "grad_norm")
"""The layer statistics written as ``train/LAYER/NAME`` and ``final/LAYER/NAME`` (a None one is left out)."""
RESULT_STATUSES = ("completed", "diverged", "cancelled")
"""A run that ended in one of these recorded its final statistics (``TrainResult.stats``). A running,
interrupted or failed run's record holds the statistics of its latest training window instead, and
not that window's step."""
EVENT_FILE_MARK = "tfevents"
"""In the name of every event file (``events.out.tfevents.*``)."""
FLUSH_SECONDS = 5.0
"""Events written between epochs reach the file within this long."""


class TensorBoardError(Exception):
    """The event directory cannot take this run; the message says why and what to do."""


def _plain(item: Data) -> Mapping[str, Any]:
    return item.model_dump() if isinstance(item, BaseModel) else item


def check_directory(directory: str | os.PathLike[str]) -> Path:
    """``directory``, created if missing, when it can take a new run: it must hold no event files.

    TensorBoard shows all the event files of one directory as one run, so a second run written
    there would mix its points with the first's; ``TensorBoardError`` says so, as it does when the
    directory cannot be created.
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        present = sorted(entry.name for entry in path.iterdir() if EVENT_FILE_MARK in entry.name)
    except OSError as error:
        raise TensorBoardError(f"{path}: cannot use as an event directory: {error.strerror or error}") from None
    if present:
        raise TensorBoardError(f"{path}: already holds TensorBoard event files ({present[0]}); TensorBoard would show "
                               "both runs as one: give each run a directory of its own")
    return path


def _histogram(tag: str, edges: Sequence[float], counts: Sequence[int]) -> summary_pb2.Summary:
    """The histogram plugin's format, as ``histogram_pb`` writes it, from the given bins instead of samples."""
    if len(edges) != len(counts) + 1:
        raise ValueError(f"{tag}: a histogram has one edge more than counts; got {len(edges)} edges and {len(counts)} counts")
    buckets = np.array([edges[:-1], edges[1:], counts], dtype=np.float64).T
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=histogram_metadata.create_summary_metadata(None, None),
                      tensor=tensor_util.make_tensor_proto(buckets, dtype=np.float64))
    return summary


def _layer_summaries(prefix: str, layers: Iterable[Data]) -> list[summary_pb2.Summary]:
    summaries = []
    for layer in map(_plain, layers):
        name = f"{prefix}/{layer['name']}"
        histogram = layer.get("histogram")
        if histogram:
            summaries.append(_histogram(f"{name}/activations", histogram["edges"], histogram["counts"]))
        summaries += [scalar_summary.scalar_pb(f"{name}/{key}", layer[key]) for key in LAYER_SCALARS if layer.get(key) is not None]
    return summaries


class EventWriter:
    """Writes one run's epochs and statistics to an event file in ``directory`` (see the module docstring).

    The directory is checked on construction (``check_directory``), before a run starts; the file
    is made at the first write, so a run that never reports leaves none. Each epoch is flushed at
    once, so TensorBoard shows a run as it trains. Use it as a context manager, or ``close()`` it.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = check_directory(directory)
        self._file: EventFileWriter | None = None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise TensorBoardError(f"{self.directory}: cannot write events: {error.strerror or error}") from None

    def _write(self, step: int, summaries: Iterable[summary_pb2.Summary]) -> None:
        event = event_pb2.Event(wall_time=time.time(), step=step)
        for summary in summaries:
            event.summary.MergeFrom(summary)
        with self._writing():
            if self._file is None:
                self._file = EventFileWriter(str(self.directory), flush_secs=FLUSH_SECONDS)
            self._file.add_event(event)

    def epoch(self, metrics: Data) -> None:
        """One epoch's metrics, at step = its epoch number; flushed."""
        data = _plain(metrics)
        self._write(data["epoch"], [scalar_summary.scalar_pb(f"epoch/{key}", data[key]) for key in EPOCH_SCALARS if data.get(key) is not None])
        self.flush()

    def window(self, step: int, layers: Iterable[Data]) -> None:
        """The statistics of one training window, monitored at optimizer step ``step``."""
        self._write(step, _layer_summaries("train", layers))

    def final(self, epochs: int, layers: Iterable[Data]) -> None:
        """The trained model's statistics, at step = ``epochs`` finished."""
        self._write(epochs, _layer_summaries("final", layers))

    def flush(self) -> None:
        """Everything written so far onto the disk."""
        if self._file is not None:
            with self._writing():
                self._file.flush()

    def close(self) -> None:
        """Flush and close the file; the writer takes no more."""
        if self._file is not None:
            with self._writing():
                self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


class Record(Protocol):
    """What ``write_record`` reads of a stored model: the store's ``ModelRecord`` or the client's."""

    @property
    def status(self) -> str: ...

    @property
    def history(self) -> Sequence[Data]: ...

    @property
    def stats(self) -> Sequence[Data]: ...


@dataclass(frozen=True)
class Written:
    """What ``write_record`` wrote, and what the record could not give."""

    epochs: int
    """Epochs written as ``epoch/*`` scalars."""
    final_layers: int
    """Layers written as ``final/*`` statistics."""
    left_out: str
    """Why the record's statistics were not written (empty when they were, or when it has none)."""


def write_record(directory: str | os.PathLike[str], record: Record) -> Written:
    """A stored model's history as ``epoch/*`` and, for a run that ended by itself (``RESULT_STATUSES``),
    its final statistics as ``final/*``.

    A record keeps no training windows (``train/*``): only ``EventWriter`` during a run sees them.
    """
    left_out = ""
    with EventWriter(directory) as writer:
        for metrics in record.history:
            writer.epoch(metrics)
        final = record.stats if record.status in RESULT_STATUSES else []
        if final:
            writer.final(len(record.history), final)
        elif record.stats:
            left_out = (f"a {record.status} run's record holds the statistics of its latest training window, "
                        "whose step it does not keep")
    return Written(epochs=len(record.history), final_layers=len(final), left_out=left_out)


__all__ = ["EventWriter", "Record", "TensorBoardError", "Written", "check_directory", "write_record"]
