"""A shared object planted by another local user never runs in the server (security finding, High).

``specbuilder/stats/native.py`` once fell back to ``$TMPDIR/specbuilder`` when neither the venv
nor ``HOME`` was writable, accepted that directory whatever its owner, and loaded any file there
under the predictable cache name: a ``.so`` planted by one user ran its constructor in a server
of another on the first Evaluate with statistics. Here the planted ``.so`` writes a marker file
from its constructor, so a load shows as the marker:

- Two OS users (root only: ``useradd``, then ``subprocess`` with ``user=``): the attacker plants
  at the old fallback and wherever else the server's user would look and the attacker can
  write; the server's user, with ``HOME=/nonexistent`` and a venv it cannot write, or with a
  ``HOME`` and venv the attacker owns, loads the kernel. The marker must stay absent and the
  kernel must still work, built in a private directory that is gone at exit.
- In this process: a cache directory writable by others, owned by another uid, or under a
  writable non-sticky directory is refused; a cached file that is group- or other-writable,
  owned by another uid, or a symlink is refused and rebuilt. A control shows that a file
  passing the checks is loaded and writes the marker, so the others could see a load.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import specbuilder
import specbuilder_wire
from conftest import Tally
from specbuilder.stats import native

CXX = native.compiler()
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler: neither the kernel nor a planted library can be built")
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to another uid, useradd, and running as other users")
OTHER_UID = 4242

PLANTED_SOURCE = """#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *marker = fopen(MARKER, "w");
    if (marker) { fputs("planted code ran\\n", marker); fclose(marker); }
}
"""


def build_planted(directory: Path, marker: Path) -> Path:
    """A shared object whose constructor writes ``marker``: what an attacker plants."""
    source = directory / "planted.c"
    source.write_text(PLANTED_SOURCE)
    library = directory / "planted.so"
    subprocess.run([CXX, "-shared", "-fPIC", f'-DMARKER="{marker}"', str(source), "-o", str(library)], check=True)
    return library


# -- two OS users: the attack as reported ---------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class TwoUsers:
    """An attacker and the server's user, and an interpreter the server's user can run the package with."""

    attacker: User
    server: User
    interpreter: str
    python_path: str


def run_as(user: User, command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``command`` run as ``user`` alone (no supplementary groups), with ``env`` as its whole environment."""
    return subprocess.run(command, user=user.uid, group=user.gid, extra_groups=[], env=env, cwd="/", capture_output=True, text=True)


def make_venv(interpreter: str, prefix: Path) -> Path:
    """A venv at ``prefix`` (owned by root, writable by no one else); its python."""
    subprocess.run([interpreter, "-m", "venv", "--without-pip", str(prefix)], check=True, capture_output=True)
    return prefix / "bin" / "python"


@pytest.fixture(scope="module")
def two_users() -> Iterator[TwoUsers]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create two OS users and run as each")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("needs useradd and userdel to create two OS users")
    suffix = uuid.uuid4().hex[:8]
    users: list[User] = []
    world = Path(tempfile.mkdtemp(prefix="specbuilder-two-users-"))
    try:
        for role in ("attacker", "server"):
            name = f"sb-{role}-{suffix}"
            added = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
                                   capture_output=True, text=True)
            if added.returncode != 0:
                pytest.skip(f"useradd {name} failed: {added.stderr.strip()}")
            entry = pwd.getpwnam(name)
            users.append(User(name, entry.pw_uid, entry.pw_gid))
        attacker, server = users
        world.chmod(0o755)
        python_path = os.pathsep.join((
            str(Path(torch.__file__).parents[1]), *(str(Path(package.__file__).resolve().parents[1]) for package in (specbuilder, specbuilder_wire)),
        ))
        # The test's own interpreter may sit where other users cannot reach (pyenv under /root):
        # try it, then the system's python of the same version, each from a root-owned venv.
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        tried: list[str] = []
        for interpreter in dict.fromkeys(filter(None, (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")))):
            python = make_venv(interpreter, world / f"probe-{len(tried)}")
            try:
                probe = run_as(server, [str(python), "-c", "import torch, specbuilder.stats.native"], {"PYTHONPATH": python_path})
            except OSError as error:  # it cannot even start the interpreter
                tried.append(f"{interpreter}: {error}")
                continue
            if probe.returncode == 0:
                yield TwoUsers(attacker, server, interpreter, python_path)
                break
            tried.append(f"{interpreter}: {probe.stderr.strip()[-300:]}")
        else:
            pytest.skip(f"user {server.name} cannot import torch and specbuilder with any interpreter: {'; '.join(tried)}")
    finally:
        shutil.rmtree(world, ignore_errors=True)
        for user in users:
            subprocess.run(["userdel", user.name], capture_output=True)


SCENARIOS = {
    "service account: HOME=/nonexistent, a root-owned venv": False,
    "HOME and venv owned by the attacker": True,
}

KERNEL_AS_SERVER = """
import json
from specbuilder.stats import native
function = native.kernel()
print(json.dumps({"kernel": function is not None, "error": native.build_error(), "refused": native.refused()}))
"""


@AS_ROOT
@pytest.mark.parametrize("attacker_owns_candidates", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_a_kernel_planted_by_another_user_never_runs_in_the_server(two_users: TwoUsers, attacker_owns_candidates: bool,
                                                                   tally: Tally) -> None:
    attacker, server = two_users.attacker, two_users.server
    path = os.environ.get("PATH", "/usr/bin:/bin")
    world = Path(tempfile.mkdtemp(prefix="specbuilder-plant-")).resolve()
    try:
        world.chmod(0o755)
        shared = world / "tmp"  # the server's TMPDIR: root-owned, world-writable and sticky, as /tmp is
        shared.mkdir()
        shared.chmod(0o1777)
        markers = world / "markers"  # where the planted constructor, running as the server, would write
        markers.mkdir()
        os.chown(markers, server.uid, server.gid)
        marker = markers / "planted-code-ran"
        planted = build_planted(world, marker)
        planted.chmod(0o755)
        prefix = world / "venv"
        python = make_venv(two_users.interpreter, prefix)
        home = Path("/nonexistent")
        if attacker_owns_candidates:
            home = world / "home"
            home.mkdir()
            subprocess.run(["chown", "-R", f"{attacker.uid}:{attacker.gid}", str(home), str(prefix)], check=True)

        old_fallback, home_cache, venv_cache = shared / "specbuilder", home / ".cache" / "specbuilder", prefix / "build" / "specbuilder"
        places = {"the old fallback $TMPDIR/specbuilder": old_fallback, "~/.cache/specbuilder": home_cache,
                  "<sys.prefix>/build/specbuilder": venv_cache}
        plants = []
        for where, directory in places.items():
            copy = run_as(attacker, ["sh", "-c", 'mkdir -p "$1" && cp "$2" "$1/$3"', "sh", str(directory), str(planted),
                                     native.cache_name(CXX)], {"PATH": path})
            tally.count(f"a .so planted by another user at {where}", "planted" if copy.returncode == 0 else "could not plant")
            if copy.returncode == 0:
                plants.append(where)
        assert plants == (list(places) if attacker_owns_candidates else ["the old fallback $TMPDIR/specbuilder"])

        env = {"PATH": path, "HOME": str(home), "TMPDIR": str(shared), "PYTHONPATH": two_users.python_path, "CXX": CXX}
        result = run_as(server, [str(python), "-c", KERNEL_AS_SERVER], env)

        ran = marker.exists()
        tally.count("the server loads the statistics kernel", "planted code ran" if ran else "planted code never ran")
        assert not ran, f"the .so planted by {attacker.name} ran in {server.name}'s process"
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout.splitlines()[-1])
        assert outcome["kernel"], outcome["error"]
        assert os.listdir(shared) == ["specbuilder"], "the server's private build directory outlived the process"
        if attacker_owns_candidates:
            owned = f"is owned by uid {attacker.uid}, not this user (uid {server.uid}) or root; not used"
            assert outcome["refused"] == [f"{venv_cache}: {prefix} {owned}", f"{home_cache}: {home} {owned}"]
        else:
            assert outcome["refused"] == [f"{venv_cache}: cannot create or reach {prefix / 'build'} (Permission denied); not used",
                                          f"{home_cache}: cannot create or reach {home} (Permission denied); not used"]
    finally:
        shutil.rmtree(world, ignore_errors=True)


# -- one user: each check on its own --------------------------------------------------------


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "planted-code-ran"


@pytest.fixture
def planted(tmp_path: Path, marker: Path) -> Path:
    return build_planted(tmp_path, marker)


def plant(planted: Path, directory: Path) -> Path:
    """A copy of ``planted`` in ``directory`` under the name ``native.load`` looks for."""
    target = directory / native.cache_name(CXX)
    shutil.copy(planted, target)
    return target


def test_control_a_cached_file_that_passes_the_checks_is_loaded(tmp_path: Path, planted: Path, marker: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    plant(planted, cache).chmod(0o755)
    native.load(cache, CXX)
    assert marker.exists(), "the control: a load of the planted file writes the marker"


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_cache_directory_others_can_write_is_refused(tmp_path: Path, planted: Path, marker: Path, mode: int) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(mode)
    plant(planted, cache)
    with pytest.raises(native.CacheRefused, match=re.escape(f"{cache} can be written by group or others (mode 0{mode:o}); not used")):
        native.load(cache, CXX)
    assert not marker.exists()


@AS_ROOT
def test_a_cache_directory_owned_by_another_uid_is_refused(tmp_path: Path, planted: Path, marker: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    plant(planted, cache)
    os.chown(cache, OTHER_UID, OTHER_UID)
    with pytest.raises(native.CacheRefused, match=re.escape(f"{cache} is owned by uid {OTHER_UID}, not this user (uid 0) or root; not used")):
        native.load(cache, CXX)
    assert not marker.exists()


@pytest.mark.parametrize("sticky", [False, True], ids=["not sticky", "sticky"])
def test_a_writable_directory_above_the_cache_is_refused_unless_sticky(tmp_path: Path, sticky: bool) -> None:
    above = tmp_path / "above"
    above.mkdir()
    above.chmod(0o1777 if sticky else 0o777)
    cache = above / "cache"
    if sticky:
        assert native.private_directory(cache) == cache
        assert (cache.stat().st_mode & 0o7777, cache.stat().st_uid) == (0o700, os.geteuid())
    else:
        with pytest.raises(native.CacheRefused, match=re.escape(f"{cache}: {above} can be written by group or others (mode 0777); not used")):
            native.private_directory(cache)
        assert not cache.exists()


PLANTED_FILES = {
    "group- and other-writable": "can be written by group or others (mode 0666)",
    f"owned by uid {OTHER_UID}": f"is owned by uid {OTHER_UID}, not this user (uid {os.geteuid()}) or root",
    "a symlink": "is a symbolic link",
}


@pytest.mark.parametrize("kind", PLANTED_FILES)
def test_a_cached_file_others_could_have_written_is_refused_and_rebuilt(tmp_path: Path, planted: Path, marker: Path, kind: str,
                                                                       tally: Tally) -> None:
    if kind.startswith("owned") and os.geteuid() != 0:
        pytest.skip("needs root to chown a file to another uid")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    target = cache / native.cache_name(CXX)
    if kind == "a symlink":
        target.symlink_to(planted)
    else:
        plant(planted, cache)
    if kind.startswith("owned"):
        os.chown(target, OTHER_UID, OTHER_UID)
    if kind.startswith("group"):
        target.chmod(0o666)
    planted_bytes = planted.read_bytes()

    library = native.load(cache, CXX)

    tally.count(f"a cached .so {kind}", "loaded" if marker.exists() else "refused, rebuilt")
    assert not marker.exists(), f"a cached file {kind} was loaded"
    assert native.refused()[-1] == f"{target} {PLANTED_FILES[kind]}; not loaded"
    assert hasattr(library, "sb_update"), "the rebuilt kernel was loaded"
    status = target.lstat()
    assert stat.S_ISREG(status.st_mode), "the rebuild took the planted file's place"
    assert (status.st_mode & 0o7777, status.st_uid) == (0o755, os.geteuid())
    assert planted.read_bytes() == planted_bytes, "the rebuild wrote through the symlink"
