"""specbuilder: neural networks as data, compiled to real torch modules, measured."""

from specbuilder.activations import ACTIVATIONS
from specbuilder.errors import Problem, SpecError
from specbuilder.layers import LAYERS
from specbuilder.spec import ModelSpec, parse_spec

__all__ = ["ACTIVATIONS", "LAYERS", "ModelSpec", "Problem", "SpecError", "parse_spec"]
