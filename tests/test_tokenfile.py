"""Token files: the format, who may read them, and their use by ``serve``, the client and ``--server`` commands."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server_helpers import QUICK, SPIRALS, server_process
from specbuilder.cli import main
from specbuilder_wire.token_files import TokenFileError, read_token_file
from specbuilder_client import Client, PermissionDenied, Unauthenticated

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


@pytest.mark.parametrize(("flag", "text", "mode", "words"), [
    ("--token-file", "secret\n", 0o644, "serve: --token-file: token file {path} has mode 0644: other users can reach it"),
    ("--token-file", "# nothing yet\n", 0o600, "serve: --token-file: token file {path} holds no token"),
    ("--inference-token-file", "secret\n", 0o660, "serve: --inference-token-file: token file {path} has mode 0660: its group can change it"),
])
def test_serve_refuses_a_bad_token_file_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, text: str,
                                                       mode: int, words: str) -> None:
    path = token_file(tmp_path, text, mode)
    assert main(["serve", "--port", "0", "--store", str(tmp_path / "store"), flag, str(path)]) == 1
    assert capsys.readouterr().err.startswith(words.format(path=path)) and not (tmp_path / "store").exists()


def test_serve_takes_several_tokens_from_files_for_rotation_and_the_client_and_cli_read_one(tmp_path: Path,
                                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    full = token_file(tmp_path, "# the old token goes once every client has the new one\nold-token\nnew-token\n", name="full")
    reader = token_file(tmp_path, "reader-token\n", name="inference")
    flags = ["--token-file", str(full), "--inference-token-file", str(reader)]
    with server_process(tmp_path / "store", *flags, env={"SPECBUILDER_TOKEN": "ignored-with-a-token-flag"}) as running:
        assert "token required (2 full access, 1 inference)" in running.banner
        assert "old-token" not in " ".join(running.process.args)  # type: ignore[arg-type]
        for token in ("old-token", "new-token"):
            with Client(running.address, token_file=token_file(tmp_path, f"{token}\n", name=token)) as client:
                assert client.train(SPIRALS, "spirals", **QUICK).result().status == "completed"
        with Client(running.address, token_file=reader) as client:
            trained = [summary.id for summary in client.list_models()]
            assert len(trained) == 2
            with pytest.raises(PermissionDenied, match="Train needs the full-access role"):
                client.train(SPIRALS, "spirals", **QUICK).result()
        with Client(running.address, token="ignored-with-a-token-flag") as client, pytest.raises(Unauthenticated):
            client.list_models()
        assert main(["models", "list", "--server", running.address, "--token-file", str(reader)]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 4  # a header, a rule and the two runs
        assert main(["models", "rm", trained[0], "--server", running.address, "--token-file", str(reader)]) == 1
        assert "DeleteModel needs the full-access role" in capsys.readouterr().err
        assert main(["models", "list", "--server", running.address, "--token-file", str(full)]) == 1
        assert capsys.readouterr().err.strip() == f"--token-file: token file {full} holds 2 tokens; a client sends one: keep one line"


def test_the_client_takes_a_token_or_a_token_file(tmp_path: Path) -> None:
    path = token_file(tmp_path, "secret\n")
    with pytest.raises(ValueError, match="a token or a token file, not both"):
        Client("127.0.0.1:1", token="secret", token_file=path)
    with pytest.raises(ValueError, match="the token is empty"):
        Client("127.0.0.1:1", token=" ")
    with pytest.raises(TokenFileError, match="other users can reach it"):
        Client("127.0.0.1:1", token_file=token_file(tmp_path, "secret\n", 0o644, name="open"))
