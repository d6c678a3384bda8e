"""Bearer tokens kept in files, so that they never appear on a command line (``ps`` shows those).

``read_token_file(path)`` is used by ``specbuilder serve --token-file`` (several tokens: any of
them is accepted, which is how tokens are rotated) and by the client's ``token_file`` (exactly one).

The format: one token per line; surrounding whitespace is stripped; blank lines and lines
starting with ``#`` are skipped. A file with no token is refused, never read as "no token".

Who may read the file is checked on the opened file itself (``fstat``), as PostgreSQL checks its
key file: a file of this user must give its group and others no access (``chmod 600``); a file
owned by root may also be read by its group (``0640``: a secret handed to a service through a
group, as mounted secrets often are); no other owner, and never any access for others or write
access for the group. Symbolic links are followed (mounted secrets are links), and the file they
lead to is what is checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class TokenFileError(ValueError):
    """A token file cannot be used; the message names the file and says what to do."""


def read_token_file(path: str | os.PathLike[str]) -> list[str]:
    """The tokens in ``path``, in file order, each once; ``TokenFileError`` if it is unreadable, too open, or holds none."""
    where = Path(path)
    try:
        descriptor = os.open(where, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO would block a plain open
    except OSError as error:
        raise TokenFileError(f"token file {where}: cannot read it: {error.strerror or error}") from None
    try:
        _check_access(where, os.fstat(descriptor))
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            raw = file.read()
    finally:
        os.close(descriptor)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenFileError(f"token file {where}: not UTF-8 text: one token per line") from None
    lines = (line.strip() for line in text.splitlines())
    tokens = list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    if not tokens:
        raise TokenFileError(f"token file {where} holds no token: write one token per line (blank lines and # comments are skipped)")
    return tokens


def _check_access(where: Path, info: os.stat_result) -> None:
    """Refuse a file that is not a regular file, or that someone other than its owner (and root's group) can reach."""
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"token file {where}: not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise TokenFileError(f"token file {where} belongs to uid {info.st_uid}, not to this user (uid {me}) or root: "
                             "use a file of your own, mode 600")
    fix = f"run `chmod 600 {where}`"
    if mode & stat.S_IRWXO:
        raise TokenFileError(f"token file {where} has mode {mode:04o}: other users can reach it; {fix}")
    if mode & stat.S_IWGRP:
        raise TokenFileError(f"token file {where} has mode {mode:04o}: its group can change it; {fix}")
    if mode & (stat.S_IRGRP | stat.S_IXGRP) and info.st_uid != 0:
        raise TokenFileError(f"token file {where} has mode {mode:04o}: its group can read it; {fix} "
                             "(only a file owned by root may be group-readable, mode 640)")
