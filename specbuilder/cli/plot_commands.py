"""``specbuilder plot``: PNG pictures of activations.

``plot atlas OUT.png`` draws every registry activation and its derivative with the flat regions
shaded; ``plot model ID OUT.png`` draws a stored model's final per-layer activation histograms.
matplotlib (and torch, for the atlas) load only when a plot is drawn.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from specbuilder.cli.common import CommandError
from specbuilder.cli.remote import add_server_options, connect
from specbuilder.cli.stores import add_store_option, open_store, store_errors, store_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plot`` and its kinds of picture to argparse's ``commands``."""
    plot = commands.add_parser("plot", help="draw PNGs: the activation atlas, a stored model's histograms", description=(
        "Draw pictures of activations as PNG files."))
    kinds = plot.add_subparsers(title="pictures", dest="picture", metavar="PICTURE", required=True)
    atlas = kinds.add_parser("atlas", help="every activation and its derivative, flat regions shaded")
    atlas.add_argument("out", type=Path, metavar="OUT.png")
    model = kinds.add_parser("model", help="a stored model's final activation histograms, one panel per layer")
    model.add_argument("id", metavar="ID", help="a stored model's id")
    model.add_argument("out", type=Path, metavar="OUT.png")
    add_store_option(model)
    add_server_options(model)
    plot.set_defaults(run=run_plot)


def check_out(path: Path) -> None:
    """Fail before any work when the picture could not be written where asked."""
    if not path.parent.is_dir():
        raise CommandError(f"{path}: no such directory: {path.parent}")


def write_figure(figure: Figure, path: Path) -> None:
    """Save ``figure`` as a PNG and say so; a write failure is a user error."""
    from specbuilder import plots

    try:
        plots.save(figure, path)
    except OSError as error:
        raise CommandError(f"{path}: cannot write: {error.strerror or error}") from None
    print(f"wrote {path}")


def run_atlas(args: argparse.Namespace) -> int:
    """Every activation of the registry on one sheet."""
    from specbuilder import plots

    check_out(args.out)
    curves = plots.atlas_curves()
    write_figure(plots.atlas(curves), args.out)
    print(f"{len(curves)} activations: f(x) solid, f'(x) dashed, flat regions shaded")
    return 0


def run_model(args: argparse.Namespace) -> int:
    """A stored model's final statistics as histograms."""
    from specbuilder import plots

    check_out(args.out)
    if args.server:
        if args.store is not None:
            raise CommandError("--store: not with --server (the server keeps its own store)")
        with connect(args) as client:
            record = client.get_model(args.id)
        stats = list(record.stats)
    else:
        from specbuilder.stats import LayerStats

        with open_store(store_path(args), weights=args.weights) as store, store_errors("plot model"):
            record = store.get(args.id)
        stats = [LayerStats.model_validate(layer) for layer in record.stats]
    if not stats:
        raise CommandError(f"plot model: model {args.id} ({record.name}) has no activation statistics to plot")
    write_figure(plots.histograms(stats), args.out)
    return 0


PICTURES = {"atlas": run_atlas, "model": run_model}


def run_plot(args: argparse.Namespace) -> int:
    """``plot PICTURE``: the picture's runner."""
    return PICTURES[args.picture](args)
