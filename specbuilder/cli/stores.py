"""The model store as commands see it: the ``--store`` option, its default, and errors for people."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from specbuilder.cli.common import CommandError

if TYPE_CHECKING:
    from specbuilder.store import ModelStore


def add_store_option(parser: argparse.ArgumentParser) -> None:
    """``--store DIR``, defaulting to the store ``specbuilder serve`` uses."""
    parser.add_argument("--store", type=Path, metavar="DIR", help="model store directory (default $SPECBUILDER_STORE, else the one `serve` uses)")


def store_path(args: argparse.Namespace) -> Path:
    """``--store``, else the store ``specbuilder serve`` uses by default."""
    if args.store is not None:
        return args.store
    from specbuilder_server.config import default_store

    return default_store()


@contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Store failures (unknown or malformed ids, bad names, I/O) as ``what: message``."""
    from specbuilder.store import StoreError

    try:
        yield
    except (StoreError, ValueError) as error:
        raise CommandError(f"{what}: {error}") from None


@contextmanager
def open_store(path: Path, create: bool = False) -> Iterator[ModelStore]:
    """The store at ``path``, closed afterwards; unless ``create``, one must already be there (a typo makes no empty store)."""
    from specbuilder.store import ModelStore

    if not create and not (path / "index.sqlite3").is_file():
        raise CommandError(f"no model store at {path}: pass --store DIR or set SPECBUILDER_STORE")
    with store_errors(str(path)):
        store = ModelStore(path)
    with store:
        yield store


__all__ = ["add_store_option", "open_store", "store_errors", "store_path"]
