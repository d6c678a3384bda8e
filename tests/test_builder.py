"""SpecBuilder: the Python form of a spec gives the same ModelSpec as the JSON form."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from specbuilder.builder import SpecBuilder
from specbuilder.errors import SpecError
from specbuilder.kinds import ActivationKind
from specbuilder.spec import KINDS, LAYER_MODELS, ModelSpec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _same(built: ModelSpec, expected: ModelSpec) -> None:
    assert built.canonical_json() == expected.canonical_json()
    assert built == expected


def test_tutorial_from_the_brief() -> None:
    built = SpecBuilder(input_shape=[10], name="tutorial").linear(5, name="fc1").relu().linear(1).sigmoid().build()
    expected = parse_spec({
        "name": "tutorial", "input_shape": [10],
        "layers": [{"type": "linear", "out_features": 5, "name": "fc1"}, {"type": "relu"},
                   {"type": "linear", "out_features": 1}, {"type": "sigmoid"}],
    })
    _same(built, expected)
    assert built.output_shape == (1,)


TUTORIALS = {
    "tutorial.json": lambda: SpecBuilder([10], name="tutorial").linear(5, name="fc1").relu(name="relu").linear(1, name="fc2"),
    "tutorial_sigmoid.json": lambda: SpecBuilder([10], name="tutorial-sigmoid")
    .linear(5, name="fc1").relu(name="relu").linear(1, name="fc2").sigmoid(name="sigmoid"),
    "tutorial_softmax.json": lambda: SpecBuilder([10], name="tutorial-softmax")
    .linear(5, name="fc1").relu(name="relu").linear(3, name="fc2").softmax(1, name="softmax"),
    "spirals_mlp.json": lambda: SpecBuilder([2], name="spirals-mlp")
    .linear(64, name="hidden1", activation="relu").linear(64, name="hidden2", activation="relu").linear(3, name="logits"),
    "digits_cnn.json": lambda: SpecBuilder((1, 8, 8), name="digits-cnn")
    .conv2d(8, 3, padding=1, name="conv1").relu(name="relu1").max_pool2d(2, name="pool")
    .conv2d(16, 3, padding=1, name="conv2").relu(name="relu2").flatten(name="flatten").linear(10, name="logits"),
}


@pytest.mark.parametrize("file", sorted(TUTORIALS))
def test_builder_equals_example_json(file: str) -> None:
    built = TUTORIALS[file]().build()
    _same(built, parse_spec(EXAMPLES / file))
    assert TUTORIALS[file]().to_dict() == json.loads((EXAMPLES / file).read_text())


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_has_a_method_taking_its_example(name: str) -> None:
    kind = KINDS[name]
    params = dict(kind.example)
    args = [params.pop(p) for p in kind.positional if p in params]
    assert len(args) == len([p for p in kind.positional if p in kind.example])
    built = getattr(SpecBuilder(list(kind.sample_shape)), name)(*args, name="it", **params).build()
    expected = parse_spec({"input_shape": list(kind.sample_shape), "layers": [{"type": name, "name": "it", **kind.example}]})
    _same(built, expected)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_signature_and_doc_come_from_the_registry(name: str) -> None:
    kind, fields = KINDS[name], LAYER_MODELS[name].model_fields
    method = getattr(SpecBuilder, name)
    signature = inspect.signature(method)
    extra = ["name"] if isinstance(kind, ActivationKind) else ["name", "activation"]
    ordered = [*kind.positional, *(p for p in kind.params if p not in kind.positional)]
    assert list(signature.parameters) == ["self", *ordered, *extra]
    for param in ordered:
        parameter = signature.parameters[param]
        expected_kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if param in kind.positional else inspect.Parameter.KEYWORD_ONLY
        assert parameter.kind is expected_kind
        expected_default = inspect.Parameter.empty if fields[param].is_required() else fields[param].default
        assert parameter.default == expected_default
        assert f"    {param}: " in method.__doc__
    assert method.__name__ == name
    assert kind.summary in method.__doc__
    assert inspect.signature(SpecBuilder([1]).relu).parameters.keys() == {"name"}


def test_builder_methods_are_not_shadowed_by_kinds() -> None:
    for own in ("add", "build", "to_dict"):
        assert own not in KINDS
        assert getattr(SpecBuilder, own).__qualname__ == f"SpecBuilder.{own}"


def test_positional_and_keyword_forms_agree() -> None:
    by_position = SpecBuilder([2, 6, 6]).conv2d(4, (3, 1)).hardtanh(-2.0, 2.0).flatten().unflatten(1, [4, -1]).build()
    by_keyword = (
        SpecBuilder([2, 6, 6]).conv2d(out_channels=4, kernel_size=[3, 1])
        .hardtanh(min_val=-2.0, max_val=2.0).flatten().unflatten(dim=1, unflattened_size=[4, -1]).build()
    )
    _same(by_position, by_keyword)
    assert by_position.output_shape == (4, 24)


def test_add_takes_aliases_and_torch_class_names() -> None:
    generic = SpecBuilder([4]).add("Linear", out_features=3, activation={"type": "LeakyReLU", "negative_slope": 0.2}).add("swish").build()
    typed = SpecBuilder([4]).linear(3, activation={"type": "leaky_relu", "negative_slope": 0.2}).silu().build()
    _same(generic, typed)


def test_layer_activation_shorthand_by_name_and_dict() -> None:
    built = SpecBuilder([4]).linear(3, activation="tanh").linear(2, activation={"type": "elu", "alpha": 0.5}).build()
    assert [node.layer.type for node in built.nodes] == ["linear", "tanh", "linear", "elu"]
    assert built.nodes[3].kwargs == {"alpha": 0.5}


def test_to_dict_holds_only_what_was_given() -> None:
    builder = SpecBuilder((3,)).leaky_relu().linear(2, bias=False)
    assert builder.to_dict() == {"input_shape": [3], "layers": [{"type": "leaky_relu"}, {"type": "linear", "out_features": 2, "bias": False}]}
    assert len(builder) == 2
    assert repr(builder) == "SpecBuilder(input_shape=[3], name=None, layers=[leaky_relu, linear])"


def test_bad_values_raise_spec_error_with_json_paths() -> None:
    builder = SpecBuilder([4]).linear(0).leaky_relu(-1).linear(2, activation="sigmoidd").add("relu7")
    with pytest.raises(SpecError) as caught:
        builder.build()
    assert [(e["path"], e["message"]) for e in caught.value.errors()] == [
        ("layers[0].out_features", "must be >= 1, got 0"),
        ("layers[1].negative_slope", "must be >= 0, got -1"),
        ("layers[2].activation.type", "unknown activation 'sigmoidd'; did you mean 'sigmoid'?"),
        ("layers[3].type", "unknown layer type 'relu7'; did you mean 'relu'?"),
    ]


def test_shape_errors_and_unknown_generic_params_name_their_path() -> None:
    with pytest.raises(SpecError) as caught:
        SpecBuilder([10]).linear(4).conv2d(2, 3).build()
    assert [p.path for p in caught.value.problems] == ["layers[1]"]
    with pytest.raises(SpecError) as caught:
        SpecBuilder([10]).add("linear", out_features=2, out_feature=3).build()
    assert [str(p) for p in caught.value.problems] == ["layers[0].out_feature: unknown field 'out_feature'; did you mean 'out_features'?"]


def test_max_params_is_passed_to_validation() -> None:
    builder = SpecBuilder([10]).linear(5)
    assert builder.build(max_params=55).num_params == 55
    with pytest.raises(SpecError) as caught:
        builder.build(max_params=54)
    assert caught.value.errors()[0]["type"] == "too_many_parameters"


def test_model_level_errors() -> None:
    with pytest.raises(SpecError) as caught:
        SpecBuilder([0], name="bad name").build()
    assert [p.path for p in caught.value.problems] == ["name", "input_shape[0]", "layers"]


def test_calls_python_cannot_bind_raise_type_error() -> None:
    builder = SpecBuilder([4])
    with pytest.raises(TypeError, match=r"SpecBuilder\.leaky_relu\(\): unknown parameter 'negative_slop'; did you mean 'negative_slope'\?"):
        builder.leaky_relu(negative_slop=0.1)
    with pytest.raises(TypeError, match=r"SpecBuilder\.relu\(\): unknown parameter 'activation'; it takes name"):
        builder.relu(activation="tanh")
    with pytest.raises(TypeError, match=r"SpecBuilder\.relu\(\): too many positional arguments"):
        builder.relu(3)
    with pytest.raises(TypeError, match=r"SpecBuilder\.linear\(\): missing a required argument: 'out_features'"):
        builder.linear()
    with pytest.raises(TypeError, match=r"SpecBuilder\.dropout\(\): multiple values for argument 'p'"):
        builder.dropout(0.1, p=0.2)
    assert len(builder) == 0


def test_importing_the_builder_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom specbuilder import SpecBuilder\n"
        "SpecBuilder([3]).linear(2).relu().build()\nassert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
