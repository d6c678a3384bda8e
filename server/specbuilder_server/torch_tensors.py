"""Wire tensors as torch tensors and back, checked against the model before any element is read.

An inline batch becomes a torch tensor over the bytes gRPC handed over (``torch.frombuffer`` on
the elements ``raw_handlers.Received`` cut out of them: no copy); a shared-memory batch is read in place while its
region is attached. Only a dtype or device the model does not use costs a conversion: for CUDA
the batch is staged in pinned memory and copied without blocking (``specbuilder.devices.to_device``),
and outputs come back with one device-to-host copy.
The shape is checked against the spec first, with a message that says what to change, and
the batch against the server's size limit before anything is computed.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from typing import TypeVar

import torch

from specbuilder.devices import to_device
from specbuilder.spec import ModelSpec
from specbuilder_server.errors import exhausted, invalid
from specbuilder_wire.arrays import WIRE_TYPES, WireType, attached
from specbuilder_wire.regions import RegionReader
from specbuilder_wire.v1 import tensor_pb2

WIRE_CODES: dict[torch.dtype, int] = {getattr(torch, wire.name): code for code, wire in WIRE_TYPES.items()}
"""torch dtype -> wire enum value (torch names its dtypes as the wire does)."""
T = TypeVar("T")

UNWRITABLE = "The given buffer is not writable"
"""torch's warning for ``frombuffer`` on read-only memory: the server only ever reads inputs."""


def check_batch_shape(shape: tuple[int, ...], spec: ModelSpec, path: str) -> None:
    """INVALID_ARGUMENT unless ``shape`` is ``[N, *input_shape]`` with ``N >= 1``; the message says how to get there."""
    problem = spec.batch_problem(shape)
    if problem:
        raise invalid(f"{path}.shape", problem, "shape")


def largest_sample(spec: ModelSpec) -> tuple[int, str]:
    """The most elements one sample makes the input or a layer's output hold, and which one."""
    sizes = [(math.prod(spec.input_shape), "the input")] + [(math.prod(n.out_shape), f"layer '{n.name}'") for n in spec.nodes]
    return max(sizes, key=lambda item: item[0])


def check_batch_size(rows: int, spec: ModelSpec, limit: int, path: str) -> None:
    """RESOURCE_EXHAUSTED when ``rows`` samples would make some layer's output exceed ``limit`` elements."""
    per_sample, where = largest_sample(spec)
    if rows * per_sample > limit:
        raise exhausted(
            f"{path}: a batch of {rows:,} samples makes {where} hold {rows * per_sample:,} elements, over this server's "
            f"limit of {limit:,} (max_batch_elements); send at most {max(limit // per_sample, 1):,} samples per batch"
        )


def check_output_size(output: torch.Tensor, limit: int, path: str) -> None:
    """RESOURCE_EXHAUSTED when ``output`` alone makes the answer larger than the message limit (``limit`` bytes).

    gRPC would refuse to send such an answer too, but only after it was copied twice, and with a
    message that names neither the server's setting nor what to do.
    """
    size = output.numel() * output.element_size()
    if size > limit:
        per_sample = max(size // max(len(output), 1), 1)
        raise exhausted(
            f"{path}: the output of {len(output):,} samples is {size:,} bytes, over this server's message limit of {limit:,} bytes "
            f"(max_message_mb); send at most {max(limit // per_sample, 1):,} samples per batch, or ask for statistics only (skip_output)"
        )


def from_buffer(view: memoryview, wire: WireType, shape: tuple[int, ...]) -> torch.Tensor:
    """A torch tensor over ``view`` itself (no copy); it is valid only while ``view`` is."""
    dtype = getattr(torch, wire.name)
    if not len(view):
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(view, dtype=dtype).view(shape)


def with_batch(tensor: tensor_pb2.Tensor, path: str, spec: ModelSpec, use: Callable[[torch.Tensor], T], *, device: torch.device,
               dtype: torch.dtype, max_elements: int, regions: RegionReader | None, data: memoryview | None = None) -> T:
    """``use(batch)`` for the batch as a checked ``[N, *input_shape]`` tensor on ``device`` in ``dtype``
    (``data``: its elements, cut from the request's bytes; see ``raw_handlers.Received``).

    On the CPU in the model's dtype the batch is the request's memory itself (or the client's
    shared memory), so it is handed to ``use`` rather than returned: nothing derived from it
    (outputs of identity layers are views of it) may outlive the call, and afterwards the
    memory is let go at once (a shared-memory region can only be closed when nothing views it).
    """
    with attached(tensor, path, regions=regions, data=data) as (wire, shape, view):
        check_batch_shape(shape, spec, path)
        check_batch_size(shape[0], spec, max_elements, path)
        try:
            return use(to_device(from_buffer(view, wire, shape), device, dtype))
        except BaseException as error:
            traceback.clear_frames(error.__traceback__)  # the failed frames must not keep the batch alive
            raise


def write_tensor(tensor: torch.Tensor, into: tensor_pb2.Tensor) -> None:
    """Fill the wire tensor ``into`` (a field of the response being built: setting it in place
    saves protobuf a copy of the whole payload) from a torch tensor on any device."""
    host = tensor.detach().contiguous().to("cpu")  # laid out on the device, then one copy back
    raw = host.view(torch.int16) if host.dtype == torch.bfloat16 else host  # numpy has no bfloat16: same bits
    into.dtype = WIRE_CODES[host.dtype]  # models compute in floating types, all of which travel
    into.shape.extend(host.shape)
    into.data = raw.numpy().tobytes()
