"""The client's parts that need no server: spec encoding, shared-memory regions, dtype checks.

Shared-memory inputs are read back here by attaching to the region by name, as another process
would; the server's own reading is covered end to end in ``test_client.py``.
"""

from __future__ import annotations

import json
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from specbuilder.spec import parse_spec
from specbuilder_client.shm import MIN_REGION_BYTES, SharedInputs
from specbuilder_client.specs import model_fields, spec_source
from specbuilder_wire.arrays import WIRE_TYPES, wire_dtype
from specbuilder_wire.regions import SHARED_MEMORY_NAME
from specbuilder_wire.v1 import tensor_pb2

SPEC = {"name": "tiny", "input_shape": [4], "layers": [{"type": "linear", "out_features": 3, "activation": "relu"}]}


def test_a_model_spec_travels_as_its_json_and_comes_back_equal() -> None:
    spec = parse_spec(SPEC)
    source = spec_source(spec)
    assert source.WhichOneof("source") == "json"
    assert parse_spec(source.json) == spec


def test_any_model_with_a_json_dump_travels_as_that_json() -> None:
    class Dumps:
        def model_dump(self, *, mode: str) -> dict[str, object]:
            assert mode == "json"
            return SPEC

    assert json.loads(spec_source(Dumps()).json) == SPEC


def test_dicts_json_text_and_files_travel_as_json_for_the_server_to_judge(tmp_path: Path) -> None:
    bad = {**SPEC, "layers": [{"type": "leaky_relu", "negative_slope": -1}]}
    assert json.loads(spec_source(bad).json) == bad  # not validated here: the server names the problems
    assert spec_source(json.dumps(SPEC)).json == json.dumps(SPEC)
    (tmp_path / "bad.json").write_text("{not json")
    assert spec_source(tmp_path / "bad.json").json == "{not json"
    assert model_fields(tmp_path / "bad.json")["spec"].json == "{not json"


def test_a_spec_of_another_type_is_refused_with_what_is_accepted() -> None:
    with pytest.raises(TypeError, match="a spec must be a ModelSpec, a dict, JSON text or a path, got list"):
        spec_source([1, 2])
    with pytest.raises(TypeError, match="JSON values only"):
        spec_source({**SPEC, "input_shape": np.array([4])})


def test_text_is_a_model_id_unless_it_is_a_json_object() -> None:
    assert model_fields("0123abcd" * 4) == {"model_id": "0123abcd" * 4}
    assert model_fields('  {"input_shape": [1]}')["spec"].json == '  {"input_shape": [1]}'


def read_back(tensor: tensor_pb2.Tensor) -> np.ndarray:
    """The tensor's elements, from its region attached by name (a copy: the region is closed after)."""
    region = shared_memory.SharedMemory(name=tensor.shared_memory.name)
    try:
        view = np.ndarray(tuple(tensor.shape), dtype=WIRE_TYPES[tensor.dtype].numpy, buffer=region.buf, offset=tensor.shared_memory.offset)
        out = view.copy()
        del view
        return out
    finally:
        region.close()


def test_a_placed_array_is_read_by_the_server_reader_exactly() -> None:
    inputs = SharedInputs()
    try:
        x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)[:, ::2]  # not contiguous: copied in C order
        with inputs.place(x) as tensor:
            assert SHARED_MEMORY_NAME.match(tensor.shared_memory.name)
            assert tensor.WhichOneof("payload") == "shared_memory"
            np.testing.assert_array_equal(read_back(tensor), x)
    finally:
        inputs.close()


def test_the_region_is_reused_grown_when_too_small_and_unlinked_on_close() -> None:
    inputs = SharedInputs()
    with inputs.place(np.ones(10, np.float32)):
        pass
    first = inputs.name
    with inputs.place(np.zeros(100, np.float32)):
        pass
    assert inputs.name == first  # fits: same region
    big = np.full(MIN_REGION_BYTES // 4 + 1, 7, np.float32)
    with inputs.place(big) as tensor:
        np.testing.assert_array_equal(read_back(tensor), big)
    grown = inputs.name
    assert grown != first
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=first)  # the outgrown region is gone
    inputs.close()
    assert inputs.name is None
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=grown)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int64", "int32", "bool"])
def test_every_numpy_dtype_of_the_wire_has_its_code(dtype: str) -> None:
    code, numpy_dtype = wire_dtype(np.zeros(1, dtype))
    assert numpy_dtype == np.dtype(dtype)
    assert code > 0


def test_a_dtype_the_wire_cannot_carry_is_refused_with_the_choices() -> None:
    with pytest.raises(TypeError, match=r"dtype complex64 cannot travel; use one of float32, float64"):
        wire_dtype(np.zeros(1, np.complex64))
