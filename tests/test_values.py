"""Python values to and from ``Value`` messages (``specbuilder_wire.values``): one value, and a training configuration's flat map."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specbuilder_wire.v1 import spec_pb2
from specbuilder_wire.values import CONFIG_KEY, EMPTY_VALUE, UnreadableValue, config_from_proto, config_to_proto, decode_value, encode_value


def wire_value(value: spec_pb2.Value) -> spec_pb2.Value:
    """The value after serialization and parsing."""
    return spec_pb2.Value.FromString(value.SerializeToString())


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (3, "int_value"), (-1, "int_value"), (2**63 - 1, "int_value"), (-(2**63), "int_value"),
        (0.5, "float_value"), (1.0, "float_value"), (-0.0, "float_value"), (1e-300, "float_value"),
        (True, "bool_value"), (False, "bool_value"), ("same", "string_value"), ("", "string_value"),
        (None, "null_value"),
        ([], "int_list"), ([3, 1], "int_list"), ([2, -1], "int_list"), ([0.5, 1.0], "float_list"),
        ([True, False], "bool_list"), (["a", "b"], "string_list"),
        ([1, 2.5], "list_value"), ([True, 1], "list_value"), ([1, None], "list_value"), ([[1, 2], [3.0], []], "list_value"),
    ],
)
def test_value_kinds(value: Any, kind: str) -> None:
    encoded = encode_value(value)
    decoded = decode_value(wire_value(encoded))

    assert encoded.WhichOneof("kind") == kind
    assert repr(decoded) == repr(value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_any_json_value_round_trips(value: Any) -> None:
    assert repr(decode_value(wire_value(encode_value(value)))) == repr(value)


def test_values_that_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match=r"^layers\[0\]\.dim: 9223372036854775808 does not fit in a 64-bit integer$"):
        encode_value(2**63, "layers[0].dim")
    with pytest.raises(ValueError, match=r"^value\[1\]: "):
        encode_value([1, -(2**63) - 1])
    with pytest.raises(TypeError, match=r"^value: cannot encode dict \{'a': 1\} as a specbuilder.v1.Value$"):
        encode_value({"a": 1})


def test_an_empty_value_cannot_be_decoded() -> None:
    with pytest.raises(UnreadableValue) as caught:
        decode_value(spec_pb2.Value(list_value=spec_pb2.ValueList(values=[spec_pb2.Value(int_value=1), spec_pb2.Value()])))
    assert [(p.path, p.type) for p in caught.value.problems] == [("value[1]", EMPTY_VALUE)]


CONFIG = {"epochs": 3, "lr": 0.5, "seed": None, "optimizer": {"type": "sgd", "momentum": 0.9}, "hidden": [4, 8], "data": "spirals"}


def test_a_configuration_travels_flat_and_comes_back_nested() -> None:
    flat = config_to_proto(CONFIG)
    assert sorted(flat) == ["data", "epochs", "hidden", "lr", "optimizer.momentum", "optimizer.type", "seed"]
    wired = {key: wire_value(value) for key, value in flat.items()}
    assert config_from_proto(wired) == CONFIG


def test_a_choice_named_by_its_bare_key_becomes_its_type() -> None:
    flat = {"optimizer": encode_value("sgd"), "optimizer.momentum": encode_value(0.9)}
    assert config_from_proto(flat) == {"optimizer": {"type": "sgd", "momentum": 0.9}}


@pytest.mark.parametrize(("keys", "path"), [
    ({"optimizer.sgd.momentum": 0.9}, "config.optimizer.sgd.momentum"),
    ({"optimizer.": 0.9}, "config.optimizer."),
    ({"epochs": 3, "epochs.count": 4}, "config.epochs"),
])
def test_a_key_that_does_not_nest_is_named(keys: dict[str, Any], path: str) -> None:
    with pytest.raises(UnreadableValue) as caught:
        config_from_proto({key: encode_value(value) for key, value in keys.items()})
    [problem] = caught.value.problems
    assert (problem.path, problem.type) == (path, CONFIG_KEY)


def test_every_empty_value_of_a_configuration_is_named() -> None:
    flat = {"lr": spec_pb2.Value(), "epochs": encode_value(3), "hidden": encode_value([1, None])}
    flat["hidden"].list_value.values[1].Clear()
    with pytest.raises(UnreadableValue) as caught:
        config_from_proto(flat, "settings")
    assert [(p.path, p.type) for p in caught.value.problems] == [("settings.hidden[1]", EMPTY_VALUE), ("settings.lr", EMPTY_VALUE)]
    assert str(caught.value).startswith("settings.hidden[1]: is an empty Value")
