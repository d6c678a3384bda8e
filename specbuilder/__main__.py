"""``python -m specbuilder``: the command line."""

from specbuilder.cli import main

raise SystemExit(main())
