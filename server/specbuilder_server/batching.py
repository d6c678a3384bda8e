"""Dynamic batching: concurrent Evaluate calls on one model merged into one forward, and split back.

``Batcher.submit`` takes each Evaluate call (``Call``: its batch priced, its model ready) and puts
it in a batch: the open one of its ``MergeKey`` (the same compiled model object, input dtype, amp
and compute lane) while that has room, else a new one. Room: at most ``max_batch_rows`` rows, and
at most what the server takes in one call: its lane's cost (``large_call_flops`` in the small lane,
``max_flops_per_call`` in the large one) and ``max_batch_elements`` in any layer; a call larger
than that computes alone. A new batch is queued in its lane at once (with
``batch_delay_us`` 0), or once it is full or the delay has passed; it takes calls until its turn in
the lane comes. So with no delay exactly the calls that queued while the lane was busy merge, and
none waits longer than it would alone.

In its turn a batch (``_run``):

- leaves out the calls cancelled while they waited (``Budget.cancelled``);
- copies each call's rows into one tensor, each call's batch checked (dtype, shape against the spec,
  size, data) and converted as it would be alone: a bad one fails alone, before its rows join;
- runs one forward (``Pass.run_merged``), each call's statistics counting only its own rows (so they
  equal what the call would get alone) and each call's budget checked between layers
  (``compute_budget.Shared``): a call cancelled or past its deadline stops alone while the others go
  on, and only its rows' share of the time counts against its compute cap and its ``compute_seconds``;
- splits the output: each call gets its own rows, in the model's output dtype, as alone;
- hands every call's outcome back to the event loop at once (one wake-up of the loop per batch).

Should the merged forward fail otherwise, each call is computed again alone, so only a call that
fails alone fails. Models that normalize with the batch's own statistics in evaluation
(``Ready.samples_independent``) never merge, nor does anything with ``dynamic_batching`` off.
Forwards, their calls and rows, and the calls waiting are in the metrics (``Metrics.forwards``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial

import torch

from specbuilder.devices import to_device
from specbuilder.stats import LayerStats
from specbuilder_wire.v1 import tensor_pb2
from specbuilder_server.compute_budget import Budget, Shared, Stopped
from specbuilder_server.compute_lanes import Lane, Lanes
from specbuilder_server.config import ServerConfig
from specbuilder_server.forward_pass import Pass, WireBatch, run_alone, write_output
from specbuilder_server.metrics import Metrics
from specbuilder_server.model_cache import Ready
from specbuilder_server.request_fields import Options

log = logging.getLogger("specbuilder_server")

Result = tuple[list[LayerStats], float]
"""What a call's future ends with: its statistics and compute seconds (the output went into its answer)."""
Outcome = Result | BaseException


@dataclass(eq=False)
class Call:
    """One Evaluate call waiting for its forward: its model, options, batch, cost and budget, and where its answer goes."""

    ready: Ready
    options: Options
    batch: WireBatch
    output: tensor_pb2.Tensor
    """The answer's output tensor, filled in place (unless outputs are skipped)."""
    budget: Budget
    flops: int
    """The call's estimated cost (``ModelSpec.flops``), already held against the server's limit."""


@dataclass(frozen=True)
class MergeKey:
    """What calls share to merge: the compiled model object (``Ready``, by identity: one spec, seed or
    stored model), the input's wire dtype, amp, and the compute lane their cost puts them in."""

    ready: Ready
    dtype: int
    amp: str | None
    lane: Lane


class _Batch:
    """Calls that compute in one forward; it takes calls while it has room, until its turn comes."""

    def __init__(self, key: MergeKey, loop: asyncio.AbstractEventLoop, max_rows: int, max_flops: int) -> None:
        self.key = key
        self.loop = loop
        """Where the calls wait for their outcomes."""
        self.calls: list[Call] = []
        self.futures: list[asyncio.Future[Result]] = []
        self._rows_left = max_rows
        self._flops_left = max_flops
        self.queued = False
        """Handed to its lane (set and read on the event loop only)."""
        self.timer: asyncio.TimerHandle | None = None

    def fits(self, call: Call) -> bool:
        return call.batch.rows <= self._rows_left and call.flops <= self._flops_left

    @property
    def full(self) -> bool:
        """No room left for even one more row."""
        return self._rows_left < 1

    def add(self, call: Call) -> asyncio.Future[Result]:
        """Take ``call``; the future its outcome will end."""
        future: asyncio.Future[Result] = self.loop.create_future()
        self.calls.append(call)
        self.futures.append(future)
        self._rows_left -= call.batch.rows
        self._flops_left -= call.flops
        return future


def _outcome(work: Callable[[], Result]) -> Outcome:
    """What ``work`` returns, or what it raises."""
    try:
        return work()
    except BaseException as error:  # noqa: BLE001 - handed to the call that waits for it
        return error


def _deliver(futures: list[asyncio.Future[Result]], outcomes: list[Outcome | None]) -> None:
    """End each call's future with its outcome (on the event loop; None: the call was cancelled before its
    forward); a call that ended meanwhile has none to end."""
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():
            continue
        if outcome is None:
            future.cancel()
        elif isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class Batcher:
    """Queues Evaluate calls in their compute lanes, merging the calls that share a ``MergeKey`` (see the module docstring)."""

    def __init__(self, lanes: Lanes, config: ServerConfig, metrics: Metrics) -> None:
        self._lanes = lanes
        self._config = config
        self._metrics = metrics
        self._forwards = {lane: metrics.forwards(lane.name) for lane in (lanes.small, lanes.large)}
        self._delay = config.batch_delay_us / 1e6
        self._lock = threading.Lock()
        self._open: dict[MergeKey, _Batch] = {}
        """The batch of each key that still takes calls (guarded by ``_lock``: the compute thread closes it)."""

    def submit(self, call: Call) -> asyncio.Future[Result]:
        """Queue ``call`` (on the event loop); the future ends with its statistics and compute seconds, or
        with what it failed with. A call whose budget is cancelled before its forward starts leaves its batch."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.for_cost(call.flops)
        key = MergeKey(call.ready, call.batch.tensor.dtype, call.options.amp, lane)
        max_flops = self._config.large_call_flops if lane is self._lanes.small else self._config.max_flops_per_call
        self._metrics.evaluate_waiting.inc()
        if not self._config.dynamic_batching or not call.ready.samples_independent:
            alone = _Batch(key, loop, 0, 0)
            future = alone.add(call)
            self._queue(alone)
            return future
        with self._lock:
            open_batch = self._open.get(key)
            if open_batch is not None and open_batch.fits(call):
                batch, full = open_batch, None
            else:
                max_rows = min(self._config.max_batch_rows, self._config.max_batch_elements // call.ready.sample_elements)
                batch, full = _Batch(key, loop, max_rows, max_flops), open_batch
                self._open[key] = batch
            future = batch.add(call)
        if full is not None:
            self._queue(full)  # it had no room for this call: it waits no longer
        if not self._delay or batch.full:
            self._queue(batch)
        elif batch.timer is None:
            batch.timer = loop.call_later(self._delay, self._queue, batch)
        return future

    def _queue(self, batch: _Batch) -> None:
        """Hand ``batch`` to its lane, once (on the event loop)."""
        if batch.queued:
            return
        batch.queued = True
        if batch.timer is not None:
            batch.timer.cancel()
        batch.key.lane.submit(self._run, batch)

    def _run(self, batch: _Batch) -> None:
        """The batch's turn, on a compute thread: its calls computed, together or alone, and their outcomes handed back."""
        with self._lock:
            if self._open.get(batch.key) is batch:
                del self._open[batch.key]
        self._metrics.evaluate_waiting.dec(len(batch.calls))
        outcomes: dict[Call, Outcome] = {}
        calls = [call for call in batch.calls if not call.budget.cancelled]
        try:
            if len(calls) == 1:
                outcomes[calls[0]] = self._alone(batch.key.lane, calls[0])
            elif calls:
                self._together(batch.key.lane, calls, outcomes)
        except BaseException as error:  # noqa: BLE001 - unexpected: the calls answer INTERNAL, and errors.handled logs it
            for call in calls:
                outcomes.setdefault(call, error)
        finally:
            batch.loop.call_soon_threadsafe(_deliver, batch.futures, [outcomes.get(call) for call in batch.calls])

    def _alone(self, lane: Lane, call: Call) -> Outcome:
        """``call`` in a forward of its own, as without batching."""
        return _outcome(partial(self._compute_alone, lane, call))

    def _compute_alone(self, lane: Lane, call: Call) -> Result:
        with Pass(call.ready, call.options) as run:
            run_alone(run, call.batch, call.output, call.budget, self._config, partial(self._forwards[lane], 1))
            return run.stats(), run.seconds

    def _together(self, lane: Lane, calls: list[Call], outcomes: dict[Call, Outcome]) -> None:
        """``calls`` in one forward: each call's rows copied in (a call whose batch is bad fails here,
        alone), the forward, each call's rows and statistics back; each alone should the forward fail.
        Each call's outcome goes into ``outcomes``."""
        ready = calls[0].ready
        host = torch.device("cpu")  # the rows are gathered here, then cross to an accelerator in one copy
        batch = torch.empty((sum(call.batch.rows for call in calls), *ready.spec.input_shape), dtype=ready.dtype,
                            pin_memory=ready.device.type == "cuda")
        taken: list[Call] = []
        parts: list[slice] = []
        end = 0
        for call in calls:
            part = slice(end, end + call.batch.rows)
            try:
                call.batch.use(ready, batch[part].copy_, self._config.max_batch_elements, host)
            except BaseException as error:  # noqa: BLE001 - this call's own failure
                outcomes[call] = error
                continue
            taken.append(call)
            parts.append(part)
            end = part.stop
        if len(taken) == 1:
            outcomes[taken[0]] = self._alone(lane, taken[0])
            return
        if not taken:
            return
        self._forwards[lane](len(taken), end)
        try:
            self._merged(taken, parts, to_device(batch[:end], ready.device), outcomes)
        except Exception as error:  # noqa: BLE001 - each call is computed again alone
            log.warning("a forward merging %d Evaluate calls failed (%s: %s); computing each alone", len(taken), type(error).__name__, error)
            for call in taken:
                if call not in outcomes:
                    outcomes[call] = self._alone(lane, call)

    def _merged(self, calls: list[Call], parts: list[slice], batch: torch.Tensor, outcomes: dict[Call, Outcome]) -> None:
        with ExitStack() as stack:
            passes = [stack.enter_context(Pass(call.ready, call.options)) for call in calls]
            shared = Shared([call.budget for call in calls], [(part.stop - part.start) / len(batch) for part in parts])
            output: torch.Tensor | None
            try:
                output = Pass.run_merged(passes, parts, batch, shared)
            except Stopped:  # every call stopped (``Shared``): each one's own reason is its outcome
                output = None
            if output is not None and not all(call.options.skip_output for call in calls):
                output = output.to("cpu")  # one copy back from a device, then each call's rows
            for index, (call, run, part) in enumerate(zip(calls, passes, parts)):
                stopped = shared.stopped.get(index)
                if stopped is not None:
                    outcomes[call] = stopped
                else:
                    assert output is not None
                    outcomes[call] = _outcome(partial(self._split, call, run, output[part]))

    def _split(self, call: Call, run: Pass, output: torch.Tensor) -> Result:
        """One call's part of a merged forward: its rows into its answer, its statistics and compute seconds."""
        write_output(output, run, call.output, self._config, call.batch.path)
        return run.stats(), run.seconds


__all__ = ["Batcher", "Call", "MergeKey", "Result"]
