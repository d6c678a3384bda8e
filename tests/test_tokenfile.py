"""Token files: the format, and who may read them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from specbuilder.tokenfile import TokenFileError, read_token_file

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to make files another user owns")


def token_file(folder: Path, text: str, mode: int = 0o600, name: str = "tokens") -> Path:
    path = folder / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_one_token_a_line_comments_and_blank_lines_skipped(tmp_path: Path) -> None:
    text = "# rotated on the 1st\n\n  current-token  \nnext-token\n# old-token\ncurrent-token\n"
    assert read_token_file(token_file(tmp_path, text)) == ["current-token", "next-token"]
    assert read_token_file(token_file(tmp_path, "only\n", 0o400)) == ["only"]
    link = tmp_path / "link"
    link.symlink_to(token_file(tmp_path, "behind a link\n", name="target"))  # mounted secrets are links
    assert read_token_file(link) == ["behind a link"]


@pytest.mark.parametrize(("mode", "words"), [
    (0o644, "mode 0644: other users can reach it; run `chmod 600"),
    (0o604, "other users can reach it"),
    (0o620, "mode 0620: its group can change it"),
])
def test_a_file_others_or_its_group_can_reach_is_refused(tmp_path: Path, mode: int, words: str) -> None:
    with pytest.raises(TokenFileError, match="token file .*tokens") as caught:
        read_token_file(token_file(tmp_path, "secret\n", mode))
    assert words in str(caught.value)


@AS_ROOT
def test_a_group_readable_file_is_accepted_only_from_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = token_file(tmp_path, "shared through a group\n", 0o640)
    assert read_token_file(path) == ["shared through a group"]  # owned by root
    os.chown(path, 54321, 0)
    monkeypatch.setattr(os, "geteuid", lambda: 54321)  # read by its owner, who is not root
    with pytest.raises(TokenFileError, match="mode 0640: its group can read it; run `chmod 600"):
        read_token_file(path)


@AS_ROOT
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = token_file(tmp_path, "theirs\n")
    os.chown(path, 54321, 54321)
    with pytest.raises(TokenFileError, match="belongs to uid 54321, not to this user"):
        read_token_file(path)


@pytest.mark.parametrize(("content", "words"), [
    ("", "holds no token"),
    ("# only a comment\n\n   \n", "holds no token"),
    (b"\xff\xfe", "not UTF-8"),
    (None, "cannot read it: No such file or directory"),
    ("folder", "not a regular file"),
])
def test_a_file_with_no_token_or_none_at_all_is_refused(tmp_path: Path, content: str | bytes | None, words: str) -> None:
    path = tmp_path / "tokens"
    if isinstance(content, bytes):
        path.write_bytes(content)
        path.chmod(0o600)
    elif content == "folder":
        path.mkdir(0o700)
    elif content is not None:
        token_file(tmp_path, content)
    with pytest.raises(TokenFileError, match=words):
        read_token_file(path)
