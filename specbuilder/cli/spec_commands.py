"""Commands about specs themselves: validate, compile, schema, activations.

``validate``, ``schema`` and ``activations`` never import torch; ``compile`` does, on first use.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from specbuilder.activations import ACTIVATIONS
from specbuilder.cli import remote
from specbuilder.cli.common import CommandError, add_max_params, load_spec, table
from specbuilder.spec import ACTIVATION_MODELS, STYLES, ModelSpec



def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's subcommands to argparse's ``commands``."""
    validate = commands.add_parser("validate", help="check spec files; one line per file", description=(
        "Validate spec files. Exit 0 when all are valid, 1 when any is not (one problem per line on stderr)."))
    validate.add_argument("specs", nargs="+", metavar="SPEC", help="JSON spec file")
    add_max_params(validate)
    validate.set_defaults(run=run_validate)

    compile_ = commands.add_parser("compile", help="compile a spec to torch: layer table, or --code", description=(
        "Compile a spec to a torch.nn.Module on the CPU and print its layer table, parameter counts and output shape."))
    compile_.add_argument("spec", metavar="SPEC", help="JSON spec file")
    compile_.add_argument("--style", choices=STYLES, default="sequential", help="nn.Sequential or a functional forward (default sequential)")
    compile_.add_argument("--code", action="store_true", help="print standalone PyTorch source instead of the table")
    add_max_params(compile_)
    remote.add_server_options(compile_)
    compile_.set_defaults(run=run_compile)

    schema = commands.add_parser("schema", help="print the JSON Schema of a spec")
    schema.set_defaults(run=run_schema)

    activations = commands.add_parser("activations", help="list the activations: parameters, range, formula")
    activations.set_defaults(run=run_activations)


def _one_line(spec: ModelSpec) -> str:
    shape = ", ".join(map(str, spec.input_shape))
    out = ", ".join(map(str, spec.output_shape))
    return f"{spec.name}: input [N, {shape}] -> output [N, {out}], {len(spec.layers)} layers, {spec.num_params:,} parameters"


def run_validate(args: argparse.Namespace) -> int:
    """Every file is checked; problems of all of them are reported before exiting 1."""
    problems: list[str] = []
    for path in args.specs:
        try:
            spec = load_spec(path, args.max_params)
        except CommandError as error:
            problems.extend(error.lines)
            continue
        print(f"{path}: ok: {_one_line(spec)}")
    if problems:
        raise CommandError(*problems)
    return 0


def run_compile(args: argparse.Namespace) -> int:
    from specbuilder.codegen import generate_code
    from specbuilder.compiler import compile_spec

    spec = load_spec(args.spec, args.max_params)
    if args.server:
        return remote.run_compile(args, spec)
    if args.code:
        print(generate_code(spec, args.style), end="")
        return 0
    model = compile_spec(spec, args.style, device="cpu", max_params=args.max_params, init=False)
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    print(f"{args.spec}: {spec.name}, style {args.style}")
    print(spec.summary())
    print(f"compiled: {type(model).__name__} with {sum(p.numel() for p in params):,} parameters "
          f"({trainable:,} trainable) in {len(params)} tensors, "
          f"{sum(b.numel() for b in model.buffers()):,} buffer elements")
    return 0


def run_schema(args: argparse.Namespace) -> int:
    print(json.dumps(ModelSpec.model_json_schema(), indent=2))
    return 0


def _number(value: float) -> str:
    return ("-" if value < 0 else "") + "inf" if math.isinf(value) else f"{value:g}"


def _default(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def run_activations(args: argparse.Namespace) -> int:
    rows = [("name", "parameters", "range", "formula")]
    for kind in ACTIVATIONS.values():
        defaults = ACTIVATION_MODELS[kind.name].defaults()
        params = ", ".join(f"{name}={_default(defaults[name])}" if name in defaults else name for name in kind.params)
        low, high = kind.range_for(defaults)
        rows.append((kind.name, params or "-", f"[{_number(low)}, {_number(high)}]", kind.formula))
    print(table(rows))
    return 0
