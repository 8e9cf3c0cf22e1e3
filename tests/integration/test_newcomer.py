"""The README's first command, run the way most people will run it: `make demo` by an ordinary
user (not root, in the `docker` group) on a clean clone, with the system's own Python, which on
Debian and Ubuntu refuses `pip install` (PEP 668). Root in CI would hide every mistake here.

The test creates the user, clones the repository at HEAD into its home, runs `make demo` as that
user, and removes the user, its home, its processes, and what it made in Docker, pass or fail.

Only the sources of the demo's wheels are local: the packages `make demo` installs are
downloaded once into a wheel cache (refreshed when pyproject.toml's requirements change), and
the user's pip installs from that cache alone. Everything else is what a newcomer gets.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Resources

SYSTEM_PYTHON = Path("/usr/bin/python3")
WHEELHOUSE = Path(os.environ.get("CARGOHOLD_TEST_WHEELHOUSE", "/var/tmp/cargohold-wheelhouse"))
# Two screens of a terminal (50 rows of 80 columns each): everything `make demo` prints, set-up
# included, counted as the rows it fills once long lines wrap.
MAX_DEMO_ROWS = 100


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _system_python() -> Path:
    """Debian's python3 with venv; installed from Debian when missing (CI runs as root)."""
    usable = [str(SYSTEM_PYTHON), "-c", "import ensurepip, venv"]
    if not SYSTEM_PYTHON.exists() or subprocess.run(usable, capture_output=True).returncode:
        if not shutil.which("apt-get"):
            _unavailable("no /usr/bin/python3 with venv, and no apt-get to install it")
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "python3", "python3-venv"],
            check=True,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return SYSTEM_PYTHON


def _externally_managed(python: Path) -> bool:
    stdlib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


def _demo_requirements() -> list[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    project = meta["project"]
    return [
        *meta["build-system"]["requires"],
        *project["dependencies"],
        *project["optional-dependencies"]["demo"],
    ]


def _wheelhouse() -> Path:
    """The wheels `make demo` installs, downloaded again only when the requirements change."""
    requirements = _demo_requirements()
    stamp = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()
    marker = WHEELHOUSE / ".requirements"
    if marker.exists() and marker.read_text() == stamp:
        return WHEELHOUSE
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    WHEELHOUSE.mkdir(parents=True)
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
         "--dest", str(WHEELHOUSE), *requirements],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if download.returncode != 0:
        _unavailable(f"cannot fill the wheel cache: {download.stderr[-2000:]}")
    WHEELHOUSE.chmod(0o755)
    for wheel in WHEELHOUSE.iterdir():
        wheel.chmod(0o644)
    marker.write_text(stamp)
    return WHEELHOUSE


def _kill_processes_of(uid: int) -> None:
    """Every process the test user left behind, each by its pid."""
    listed = subprocess.run(["pgrep", "-U", str(uid)], capture_output=True, text=True)
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _remove_user(user: pwd.struct_passwd) -> None:
    _kill_processes_of(user.pw_uid)
    subprocess.run(["userdel", "--remove", user.pw_name], capture_output=True)
    shutil.rmtree(user.pw_dir, ignore_errors=True)
    for folder in (Path("/tmp"), Path("/var/tmp")):
        for leftover in folder.iterdir():
            with contextlib.suppress(OSError):
                if leftover.lstat().st_uid == user.pw_uid:
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink()


@contextlib.contextmanager
def _a_user(*groups: str) -> Iterator[pwd.struct_passwd]:
    """A fresh user with a home; removed with everything it owns, pass or fail."""
    if os.geteuid() != 0:
        _unavailable("creating a user needs root (CI runs as root)")
    name = f"chnew{secrets.token_hex(4)}"
    extra = ["--groups", ",".join(groups)] if groups else []
    subprocess.run(
        ["useradd", "--create-home", "--user-group", *extra, "--shell", "/bin/bash", name],
        check=True,
        capture_output=True,
    )
    user = pwd.getpwnam(name)
    try:
        yield user
    finally:
        _remove_user(user)


@pytest.fixture
def newcomer() -> Iterator[pwd.struct_passwd]:
    """A fresh user in the docker group."""
    try:
        grp.getgrnam("docker")
    except KeyError:
        _unavailable("no docker group: dockerd must start after it exists (ensure-engine.sh)")
    with _a_user("docker") as user:
        yield user


@pytest.fixture
def outsider() -> Iterator[pwd.struct_passwd]:
    """A fresh user in no group but its own."""
    with _a_user() as user:
        yield user


def _as(user: pwd.struct_passwd, env: dict[str, str]) -> list[str]:
    """The command prefix that runs as ``user`` with exactly ``env``, as a fresh login would."""
    full = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **env}
    return ["runuser", "-u", user.pw_name, "--", "env", "-i",
            *[f"{key}={value}" for key, value in full.items()]]


def _docker_socket_is_for_the_group() -> None:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        _unavailable(f"DOCKER_HOST={host} is not a local socket")
    socket = Path(host.removeprefix("unix://"))
    info = socket.stat()
    if grp.getgrgid(info.st_gid).gr_name != "docker" or info.st_mode & 0o060 != 0o060:
        pytest.fail(
            f"{socket} is not usable by the docker group: dockerd must start after the group "
            "exists, or with --group docker (scripts/ensure-engine.sh does both)"
        )


def _clone_for(user: pwd.struct_passwd, project: str, image: str) -> Path:
    """A clean clone of this repository's HEAD (what is committed: CI's checkout) in the user's
    home, owned by the user. Only the example's project and image names change, so that nothing
    collides with another demo on a shared engine (demo.sh reads the names from the spec)."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        _unavailable(f"{REPO} is not a git checkout: {head.stderr.strip()}")
    clone = Path(user.pw_dir) / "cargohold"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(clone)], check=True)
    subprocess.run(
        ["git", "-C", str(clone), "checkout", "--quiet", "--detach", head.stdout.strip()],
        check=True,
    )
    spec = clone / "examples" / "digits" / "cargohold.toml"
    text = spec.read_text(encoding="utf-8")
    renamed = re.sub(r'(?m)^name = "digits"$', f'name = "{project}"', text)
    renamed = re.sub(r'(?m)^image = "[^"]+"$', f'image = "{image}"', renamed)
    moved = renamed.count(f'name = "{project}"') != 1 or renamed.count(f'image = "{image}"') != 1
    assert not moved, "the example's cargohold.toml no longer has one project name and image"
    spec.write_text(renamed, encoding="utf-8")
    subprocess.run(
        ["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(clone)], check=True
    )
    return clone


def test_make_demo_as_a_newcomer_with_the_system_python(
    newcomer: pwd.struct_passwd, docker_resources: Resources
) -> None:
    _docker_socket_is_for_the_group()
    python = _system_python()
    wheels = _wheelhouse()
    image = f"{docker_resources.project}-digits"
    docker_resources.images.append(image)
    clone = _clone_for(newcomer, docker_resources.project, image)
    env = {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    if os.environ.get("DOCKER_HOST"):
        env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    as_user = _as(newcomer, env)
    which = subprocess.run([*as_user, "sh", "-c", "command -v python3"], capture_output=True,
                           text=True)
    assert which.stdout.strip() == str(python), f"the user's python3 is {which.stdout!r}"

    command = [*as_user, "make", "-C", str(clone), "--no-print-directory", "demo"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"make demo did not finish in 15 minutes:\n{output[-4000:]}")
    assert proc.returncode == 0, f"make demo failed:\n{output[-6000:]}"
    assert "demo ok: resumed from epoch" in output, output[-4000:]

    model = clone / "examples" / "digits" / "artifacts" / "model.npz"
    assert model.stat().st_uid == newcomer.pw_uid, "the model is not owned by the user"
    venv = (clone / ".venv" / "pyvenv.cfg").read_text(encoding="utf-8")
    assert re.search(r"(?m)^home = /usr/bin$", venv), venv
    if _externally_managed(python):
        # Nothing went into the system interpreter: cargohold is only in the project's venv.
        outside = subprocess.run(
            ["runuser", "-u", newcomer.pw_name, "--", str(python), "-c", "import cargohold"],
            capture_output=True, cwd="/",
        )
        assert outside.returncode != 0
    rows = sum(max(1, -(-len(line) // 80)) for line in output.splitlines())
    assert rows <= MAX_DEMO_ROWS, f"{rows} rows of 80 columns:\n{output}"
    assert "Traceback" not in output


# What needs root, checked before it is attempted: each message names the command to run as root.


def _ensure_engine(
    user: pwd.struct_passwd, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    # A copy of the script the user can read (the repository may sit in root's home).
    scripts = Path(user.pw_dir) / "scripts"
    shutil.copytree(REPO / "scripts", scripts)
    return subprocess.run(
        [*_as(user, env), "bash", str(scripts / "ensure-engine.sh")],
        capture_output=True, text=True, timeout=120, cwd="/",
    )


def test_a_user_outside_the_docker_group_is_told_the_usermod_line(
    outsider: pwd.struct_passwd, docker_client: object
) -> None:
    _docker_socket_is_for_the_group()
    result = _ensure_engine(outsider, {})
    assert result.returncode == 1
    assert "not in the docker group" in result.stderr
    assert f"usermod -aG docker {outsider.pw_name}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_group_member_whose_socket_is_not_the_groups_is_told_to_fix_the_socket(
    newcomer: pwd.struct_passwd, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # dockerd started before the docker group existed: its socket is root's alone. usermod
    # would change nothing for a user who is in the group already.
    import socket

    folder = tmp_path_factory.mktemp("sock")
    folder.chmod(0o755)
    path = folder / "docker.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        path.chmod(0o600)
        result = _ensure_engine(newcomer, {"DOCKER_HOST": f"unix://{path}"})
    assert result.returncode == 1, result.stderr
    assert "is in the docker group, but its socket is not the group's" in result.stderr
    assert f"chgrp docker {path} && chmod 660 {path}" in result.stderr
    assert "usermod" not in result.stderr and "Traceback" not in result.stderr


def test_without_docker_the_user_is_told_the_apt_line(outsider: pwd.struct_passwd) -> None:
    # A PATH with the shell's tools and no docker at all.
    tools = Path(outsider.pw_dir) / "bin"
    tools.mkdir()
    for tool in ("bash", "dirname", "id", "grep", "head", "tail", "sed", "cat"):
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    result = _ensure_engine(outsider, {"PATH": str(tools)})
    assert result.returncode == 1, result.stderr
    assert "Docker is not installed" in result.stderr
    assert f"apt-get install -y docker.io && usermod -aG docker {outsider.pw_name}" in (
        result.stderr
    )


def test_an_engine_that_does_not_answer_is_named(newcomer: pwd.struct_passwd) -> None:
    result = _ensure_engine(newcomer, {"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 1
    assert "No Docker engine answers at DOCKER_HOST=unix:///nonexistent/docker.sock" in (
        result.stderr
    )


def _setup_with_system_python(
    tmp_path: Path, script: str, extra: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """setup.sh EXTRA with SYSTEM_PYTHON a shell ``script`` standing in for a distribution's
    python3, into a throw-away VENV that is removed again: the result and the VENV's name."""
    python = tmp_path / "python3"
    python.write_text(script)
    python.chmod(0o755)
    venv = f".venv-test-{secrets.token_hex(4)}"
    env = {**os.environ, "SYSTEM_PYTHON": str(python), "VENV": venv,
           "CARGOHOLD_LOG_DIR": str(tmp_path / "logs")}
    for name in ("PYTHON", "VIRTUAL_ENV"):
        env.pop(name, None)
    try:
        result = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), extra], env=env,
                                capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(REPO / venv, ignore_errors=True)
    return result, venv


def test_without_python3_venv_the_message_is_the_apt_line(tmp_path: Path) -> None:
    # A python3 like Debian's without python3-venv: `import ensurepip` fails.
    result, venv = _setup_with_system_python(
        tmp_path,
        f"#!/bin/sh\ncase \"$*\" in *ensurepip*) exit 1;; esac\nexec {sys.executable} \"$@\"\n",
        "demo",
    )
    assert result.returncode == 1
    assert "python3 -m venv is not installed" in result.stderr
    assert "apt-get install -y python3-venv" in result.stderr
    assert not (REPO / venv).exists()


def test_a_python_older_than_3_11_is_named_with_the_way_out(tmp_path: Path) -> None:
    # Ubuntu 22.04's python3 is 3.10: the venv would be made, then pip would refuse cargohold.
    result, venv = _setup_with_system_python(
        tmp_path,
        "#!/bin/sh\ncase \"$*\" in *version_info*) exit 1;; *python_version*) echo 3.10.12;"
        " exit 0;; esac\nexit 0\n",
        "dev",
    )
    assert result.returncode == 1
    python = tmp_path / "python3"
    assert f"{python} is Python 3.10.12; cargohold needs 3.11 or newer" in result.stderr
    assert "apt-get install -y python3.11 python3.11-venv" in result.stderr
    assert "make test SYSTEM_PYTHON=python3.11" in result.stderr
    assert not (REPO / venv).exists()


def test_the_system_python_named_as_python_is_refused_with_the_way_out(
    newcomer: pwd.struct_passwd, docker_resources: Resources
) -> None:
    python = _system_python()
    if not _externally_managed(python):
        pytest.skip(f"{python} carries no EXTERNALLY-MANAGED marker here")
    clone = _clone_for(newcomer, docker_resources.project, f"{docker_resources.project}-digits")
    env = {"PYTHON": str(python), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(_wheelhouse())}
    result = subprocess.run(
        [*_as(newcomer, env), "bash", str(clone / "scripts" / "setup.sh"), "demo"],
        capture_output=True, text=True, timeout=300, cwd="/",
    )
    assert result.returncode == 1, result.stderr
    assert "may not be changed with pip (PEP 668)" in result.stderr
    assert "Leave PYTHON unset" in result.stderr
    assert "externally-managed-environment" in result.stderr  # the log's tail, pip's own words
    assert not (clone / ".venv").exists()


def test_a_folder_that_is_not_a_venv_is_never_removed(tmp_path: Path) -> None:
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    env = {**os.environ, "VENV": str(folder), "CARGOHOLD_LOG_DIR": str(tmp_path / "logs")}
    for name in ("PYTHON", "VIRTUAL_ENV"):
        env.pop(name, None)
    result = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "demo"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"{folder} exists and is not a virtual environment" in result.stderr
    assert (folder / "notes.txt").read_text() == "keep me"


def test_reading_an_empty_volume_keeps_the_owner_the_job_was_given(
    base_image: str, docker_resources: Resources
) -> None:
    """A newcomer's first run: cargohold hands the fresh checkpoint volume to the user's uid, then
    looks into it (through a helper, not being root) for a checkpoint to resume from. Docker's
    copy-up of the helper's folder into the empty volume once gave it back to root, and the job
    could not save (`Permission denied`); the demo test above caught it."""
    from cargohold.engine import MountRequest, connect

    engine = connect()
    volume = f"{docker_resources.project}-ckpt"
    docker_resources.volumes.append(volume)
    engine.create_volume(volume, {"cargohold.project": docker_resources.project})
    mount = MountRequest("volume", "/ckpt", volume)
    code, output = engine.run_helper(base_image, ["1234:1234", "/ckpt"], [mount],
                                     entrypoint=["chown"])
    assert code == 0, output
    with engine.archive_helper(volume, readonly=True):
        pass
    code, output = engine.run_helper(base_image, ["-c", "%u:%g", "/ckpt"], [mount],
                                     entrypoint=["stat"])
    assert (code, output.strip()) == (0, "1234:1234")
