"""specbuilder: neural networks as data, compiled to real torch modules, trained and measured.

Validation (``ModelSpec``, ``parse_spec``, ``SpecBuilder``) and ``LayerStats`` never import torch,
so light consumers stay light; the torch-backed names load on first use.
"""

from __future__ import annotations

from specbuilder.activations import ACTIVATIONS
from specbuilder.errors import SpecError
from specbuilder.layers import LAYERS
from specbuilder.lazy import lazy_getattr
from specbuilder.spec import ModelSpec, parse_spec
from specbuilder_wire.results import Problem

_LAZY = {
    "SpecBuilder": "specbuilder.builder",
    "compile_spec": "specbuilder.compiler",
    "CompileCache": "specbuilder.compiler",
    "FunctionalModel": "specbuilder.compiler",
    "generate_code": "specbuilder.codegen",
    "ActivationMonitor": "specbuilder.stats",
    "LayerStats": "specbuilder.stats",
    "train": "specbuilder.training",
    "train_events": "specbuilder.training",
    "TrainConfig": "specbuilder.training",
    "TrainResult": "specbuilder.training",
    "CancelToken": "specbuilder.training",
    "DATASETS": "specbuilder.datasets",
    "load_dataset": "specbuilder.datasets",
    "ModelStore": "specbuilder.store",
}

__all__ = ["ACTIVATIONS", "LAYERS", "ModelSpec", "Problem", "SpecError", "parse_spec", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
