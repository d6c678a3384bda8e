"""The model store as commands see it: the ``--store`` option, its default, and errors for people.

``--store`` is a directory or a ``postgresql://`` URL; a PostgreSQL store's weights location
(``s3://BUCKET/PREFIX`` or a shared directory) is ``--weights``, else ``$SPECBUILDER_WEIGHTS``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from specbuilder.cli.common import CommandError

if TYPE_CHECKING:
    from specbuilder.store import ModelStore


STORE_HELP = ("model store: a directory, or postgresql://USER@HOST:PORT/DATABASE with --weights "
              "(default $SPECBUILDER_STORE, else the one `serve` uses)")


def add_store_option(parser: argparse.ArgumentParser, help: str = STORE_HELP) -> None:
    """``--store DIR|URL`` (by default the store ``specbuilder serve`` uses, as ``help`` says), and ``--weights URL`` for a PostgreSQL one."""
    parser.add_argument("--store", type=store_location, metavar="DIR|URL", help=help)
    parser.add_argument("--weights", metavar="URL", default=None, help=(
        "where a PostgreSQL store keeps weights: s3://BUCKET/PREFIX or a shared directory (default $SPECBUILDER_WEIGHTS)"))


URL_PREFIX = re.compile(r"(postgres(?:ql)?):/+")


def store_location(value: str | os.PathLike[str]) -> Path | str:
    """``--store``'s value: a URL as given, a directory as a ``Path``.

    A URL that went through ``Path`` (which folds ``//``) is given its ``//`` back, so callers
    that keep the option as a path still open the right database.
    """
    text = os.fspath(value)
    match = URL_PREFIX.match(text)
    return f"{match[1]}://{text[match.end():]}" if match else Path(text)


def store_path(args: argparse.Namespace) -> Path | str:
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
def open_store(path: Path | str, create: bool = False, weights: str | None = None) -> Iterator[ModelStore]:
    """The store at ``path`` (a directory or a URL; ``weights``, else ``$SPECBUILDER_WEIGHTS``, where a
    PostgreSQL store keeps weights), closed afterwards; unless ``create``, a directory store must
    already be there (a typo makes no empty store)."""
    from specbuilder.store import ModelStore

    location = store_location(path)
    if isinstance(location, Path) and not create and not (location / "index.sqlite3").is_file():
        raise CommandError(f"no model store at {location}: pass --store DIR or set SPECBUILDER_STORE")
    with store_errors("--store"):
        store = ModelStore.open(location, weights=weights or os.environ.get("SPECBUILDER_WEIGHTS") or None)
    with store:
        yield store


__all__ = ["add_store_option", "open_store", "store_errors", "store_location", "store_path"]
