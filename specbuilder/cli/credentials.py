"""Tokens from the command line, token files and ``$SPECBUILDER_TOKEN``, for ``serve`` and for ``--server`` commands.

A token given on the command line shows in ``ps``; a token file (``specbuilder_wire.token_files``) or
the variable does not. An empty token is refused, never read as "no token". ``$SPECBUILDER_TOKEN``
is read only when no token option is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from specbuilder.cli.common import CommandError
from specbuilder_wire.token_files import TokenFileError, read_token_file

TOKEN_ENV = "SPECBUILDER_TOKEN"


def tokens(command: str, option: str, given: Sequence[str] | None, files: Sequence[Path] | None) -> list[str]:
    """The tokens of ``option`` (every ``--OPTION`` value and every line of every ``--OPTION-file``), checked."""
    found: list[str] = []
    for token in given or ():
        if not token.strip():
            raise CommandError(f"{command}: {option} is empty: give the token, or leave the option out")
        found.append(token)
    for path in files or ():
        try:
            found += read_token_file(path)
        except TokenFileError as error:
            raise CommandError(f"{command}: {option}-file: {error}") from None
    return found


def env_token(command: str) -> str | None:
    """``$SPECBUILDER_TOKEN``, None when unset; set but empty is refused."""
    value = os.environ.get(TOKEN_ENV)
    if value is not None and not value.strip():
        raise CommandError(f"{command}: ${TOKEN_ENV} is set but empty: give the token, or unset the variable")
    return value


def full_tokens(command: str, given: Sequence[str] | None, files: Sequence[Path] | None) -> list[str]:
    """``--token`` and ``--token-file``, else ``$SPECBUILDER_TOKEN``, else none."""
    found = tokens(command, "--token", given, files)
    if found:
        return found
    from_env = env_token(command)
    return [from_env] if from_env is not None else []
