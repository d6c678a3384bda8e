"""The model store's permissions: what an audit found it let through.

Everything a store creates is its user's alone, and a directory of another user is refused
(checked with a throwaway OS user: the suite runs as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from specbuilder.compiler import compile_spec
from specbuilder.store import ModelStore, StoreError
from test_store import MLP


def modes(root: Path) -> dict[str, int]:
    """Every path of a store (the root as ``.``) and its permission bits."""
    return {".": stat.S_IMODE(root.stat().st_mode)} | {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in root.rglob("*")}


# -- permissions ----------------------------------------------------------------------------


def test_everything_a_store_creates_is_its_users_alone(tmp_path: Path) -> None:
    """Under umask 0 too: the modes are the store's own, not the umask's."""
    umask = os.umask(0)
    try:
        with ModelStore(tmp_path / "a" / "store") as store:
            store.save(compile_spec(MLP, device="cpu"))
            store.start_run(MLP)
            created = modes(store.path)
    finally:
        os.umask(umask)
    assert {"index.sqlite3-wal", "index.sqlite3-shm", "locks/store.lock"} <= created.keys()
    assert any(name.endswith(".owner") for name in created) and any(name.endswith(".safetensors") for name in created)
    expected = {name: 0o700 if (tmp_path / "a" / "store" / name).is_dir() else 0o600 for name in created}
    assert created == expected


def test_an_older_stores_wider_modes_are_narrowed_on_open_but_not_its_root(tmp_path: Path) -> None:
    with ModelStore(tmp_path) as store:
        store.save(compile_spec(MLP, device="cpu"))
    for name, mode in {".": 0o755, "weights": 0o755, "locks": 0o755, "index.sqlite3": 0o644, "index.sqlite3-wal": 0o666}.items():
        if (tmp_path / name).exists():
            os.chmod(tmp_path / name, mode)
    with ModelStore(tmp_path):
        narrowed = modes(tmp_path)
    assert narrowed["."] == 0o755
    assert {name: mode for name, mode in narrowed.items() if name != "." and mode & 0o077} == {}


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o703])
def test_a_root_every_user_may_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    os.chmod(tmp_path, mode)
    with pytest.raises(StoreError) as refused:
        ModelStore(tmp_path)
    assert str(refused.value) == (f"{tmp_path} can be written by every user (mode {mode:o}), so any of them could replace the "
                                  f"store's index or weights; use a directory only you can write to (chmod o-w {tmp_path})")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway OS user (removed afterwards); the tests that need one need root to make it."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to make a second OS user")
    name = f"sbstore{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=True)


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory every user can reach (tmp_path's parents are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="specbuilder-store-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.parametrize("owned_by_other", [".", "weights", "index.sqlite3"])
def test_a_store_another_user_owns_any_of_is_refused_even_by_root(tmp_path: Path, other_user: pwd.struct_passwd, owned_by_other: str) -> None:
    root = tmp_path / "theirs"
    ModelStore(root).close()
    before = modes(root)
    os.chown(root / owned_by_other, other_user.pw_uid, other_user.pw_gid)
    with pytest.raises(StoreError) as refused:
        ModelStore(root)
    assert str(refused.value) == (
        f"{root / owned_by_other} belongs to {other_user.pw_name} (uid {other_user.pw_uid}), "
        "not to this process's user, root (uid 0): a model store is only opened by the user who owns it, as its owner can "
        "read and replace what it holds; use a store directory of your own (--store DIR or $SPECBUILDER_STORE), or run as its owner")
    assert modes(root) == before and list((root / "locks").glob("*.owner")) == []


def test_another_user_can_neither_read_a_store_nor_take_its_locks(reachable: Path, other_user: pwd.struct_passwd) -> None:
    """Even in a root its owner left readable (0755): the index is 0600, the weights and locks 0700."""
    root = reachable / "store"
    with ModelStore(root) as store:
        store.save(compile_spec(MLP, device="cpu"))
    root.chmod(0o755)
    for command in (["cat", root / "index.sqlite3"], ["ls", root / "weights"], ["ls", root / "locks"], ["touch", root / "locks" / "x"]):
        tried = subprocess.run(command, user=other_user.pw_uid, capture_output=True, text=True)
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, command
    assert subprocess.run(["ls", root], user=other_user.pw_uid, capture_output=True).returncode == 0, "the check above is meaningful"
