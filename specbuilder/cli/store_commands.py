"""``specbuilder store copy SRC DST``: every model and run of one store into another, verified.

Either side is a directory or a ``postgresql://`` URL; a PostgreSQL side names where its
weights are with ``--source-weights`` / ``--target-weights`` (``s3://BUCKET/PREFIX`` or a shared
directory). The target is created if it is a directory that does not exist yet.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from specbuilder.cli.common import CommandError
from specbuilder.cli.stores import store_errors, store_location

if TYPE_CHECKING:
    from specbuilder.store.records import ModelRecord


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``store`` and its actions to argparse's ``commands``."""
    store = commands.add_parser("store", help="move stores: copy every model and run from one store to another", description=(
        "Work on whole stores."))
    actions = store.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    copy = actions.add_parser("copy", help="copy every model and run from SRC into DST and verify each", description=(
        "Copy every finished model and run from SRC into DST, ids, times, training records and weights kept, each "
        "verified (weights compared by SHA-256). Entries already in DST are verified, not copied again, so an "
        "interrupted copy is finished by running it again. Runs still going in SRC are left out."))
    copy.add_argument("source", type=store_location, metavar="SRC", help="the store to copy from: a directory or postgresql://...")
    copy.add_argument("target", type=store_location, metavar="DST", help="the store to copy into: a directory or postgresql://...")
    copy.add_argument("--source-weights", metavar="URL", help="where SRC keeps weights, for a PostgreSQL SRC: s3://BUCKET/PREFIX or a directory")
    copy.add_argument("--target-weights", metavar="URL", help="where DST keeps weights, for a PostgreSQL DST: s3://BUCKET/PREFIX or a directory")
    store.set_defaults(run=run_store)


def run_store(args: argparse.Namespace) -> int:
    """``store ACTION``: the action's runner."""
    return ACTIONS[args.action](args)


def run_copy(args: argparse.Namespace) -> int:
    """Copy, printing one line per entry and a total; exit 1 if an entry differs between the stores."""
    from specbuilder.store import ModelStore
    from specbuilder.store.copy import CopyMismatch, copy_store

    def report(record: ModelRecord, outcome: str) -> None:
        print(f"{record.id}  {outcome:<8}  {record.name} ({record.status})", flush=True)

    with store_errors("SRC"):
        source = ModelStore.open(args.source, weights=args.source_weights)
    with source, store_errors("DST"):
        target = ModelStore.open(args.target, weights=args.target_weights)
        with target:
            try:
                done = copy_store(source, target, report)
            except CopyMismatch as error:
                raise CommandError(f"store copy: {error}") from None
    print(f"{len(done.copied)} copied, {len(done.verified)} already there and verified, {len(done.running)} still running (left out)")
    return 0


ACTIONS = {"copy": run_copy}
"""``store``'s actions by name."""
