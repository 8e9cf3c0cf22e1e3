"""The engine seam without a daemon: JSON recorded from a real engine (docker.io 20.10,
API 1.41; ``tests/fixtures/docker``) parsed into cargohold's values, the one error table, and
the rule that decides when a helper container was left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from cargohold.engine import _errors, _parse
from cargohold.engine.helpers import (
    FOREIGN_AGE,
    LABEL_OWNER,
    UNSEEN,
    Owner,
    is_stale,
    process_start,
    this_process,
)
from cargohold.errors import (
    BuildFailed,
    CargoholdError,
    ContainerNotFound,
    EngineError,
    EngineUnavailable,
    ImageNotFound,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "docker"


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_engine_info_from_recorded_version_and_info() -> None:
    info = _parse.parse_engine_info(_load("version.json"), _load("info.json"))
    assert info.version.startswith("20.10")
    assert info.api_version == "1.41"
    assert info.storage_driver == "overlay2"
    assert info.root_dir == "/var/lib/docker"
    assert "runc" in info.runtimes
    assert not info.userns_remap and not info.rootless
    assert info.cpus >= 1 and info.memory > 0


def test_volume_from_recorded_inspect() -> None:
    volume = _parse.parse_volume(_load("volume.json"))
    assert volume.name.startswith("rec-")
    assert volume.driver == "local"
    assert volume.labels == {"cargohold.project": "digits", "cargohold.store": "checkpoints"}
    assert volume.mountpoint.endswith("/_data")
    assert volume.options == {}  # the engine sends null


def test_exited_container_from_recorded_inspect() -> None:
    c = _parse.parse_container(_load("container-exited.json"))
    assert c.name == "rec-exited" and len(c.id) == 64
    assert (c.state, c.exit_code) == ("exited", 3)
    assert c.labels["cargohold.job"] == "train"
    assert c.storage_driver == "overlay2"
    assert c.upper_dir is not None and c.upper_dir.endswith("/diff")
    assert len(c.volumes) == 1 and c.volumes[0].startswith("rec-")
    assert c.created > 1.7e9


def test_created_and_running_containers_have_no_exit_code() -> None:
    created = _parse.parse_container(_load("container-created.json"))
    running = _parse.parse_container(_load("container-running.json"))
    assert (created.state, created.exit_code) == ("created", None)
    assert (running.state, running.exit_code) == ("running", None)
    assert running.volumes == ()  # a tmpfs is not a volume


def test_container_listing_from_recorded_json() -> None:
    listed = {c.name: c for c in map(_parse.parse_container_summary, _load("containers-list.json"))}
    assert set(listed) == {"rec-exited", "rec-helper", "rec-running"}
    assert listed["rec-running"].status.startswith("Up")
    assert listed["rec-exited"].state == "exited"
    assert listed["rec-helper"].labels["cargohold.helper"] == "true"
    assert listed["rec-helper"].volumes == listed["rec-exited"].volumes
    assert listed["rec-helper"].created > 1.7e9


def test_changes_from_recorded_diff() -> None:
    assert _parse.parse_changes(_load("diff.json")) == ["/ckpt", "/ckpt/model.pt", "/data"]
    assert _parse.parse_changes(None) == []


@pytest.mark.parametrize(
    "data", [{}, {"Id": "x"}, {"Id": "x", "Name": "/n", "State": {"Status": 3}}, [], "text"]
)
def test_unexpected_json_is_an_engine_error_not_a_key_error(data: object) -> None:
    with pytest.raises(EngineError, match="not what cargohold understands"):
        _parse.parse_container(data)


def test_die_event() -> None:
    stop = _parse.parse_stop({"id": "abc", "Actor": {"ID": "abc", "Attributes": {"name": "j"}}})
    assert (stop.id, stop.name) == ("abc", "j")


def _http_error(status: int, message: str) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps({"message": message}).encode()
    return requests.HTTPError(response=response)


def _raise_in_translate(exc: BaseException, **kwargs: Any) -> CargoholdError:
    with pytest.raises(CargoholdError) as caught, _errors.translate("Doing it", **kwargs):
        raise exc
    return caught.value


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (docker.errors.ImageNotFound("no such image"), ImageNotFound),
        (docker.errors.NotFound("no such thing"), EngineError),
        (docker.errors.APIError("refused"), EngineError),
        (docker.errors.BuildError("step 3 failed", [{"stream": "RUN false\n"}]), BuildFailed),
        (docker.errors.DockerException("Error while fetching server API version"),
         EngineUnavailable),
        (requests.exceptions.ConnectionError("Connection aborted."), EngineUnavailable),
        (requests.exceptions.ChunkedEncodingError("Connection broken"), EngineUnavailable),
        (ConnectionResetError(104, "Connection reset by peer"), EngineUnavailable),
    ],
)
def test_one_table_maps_every_sdk_error(exc: BaseException, expected: type) -> None:
    error = _raise_in_translate(exc)
    assert type(error) is expected
    assert error.message.startswith("Doing it: ")
    assert error.hint


def test_not_found_means_what_the_call_says() -> None:
    missing = ContainerNotFound("No container x.", hint="docker ps -a")
    assert _raise_in_translate(docker.errors.NotFound("x"), not_found=missing) is missing
    # An image that is missing stays an image error even where a container was looked for.
    error = _raise_in_translate(docker.errors.ImageNotFound("x"), not_found=missing)
    assert type(error) is ImageNotFound


def test_a_stream_that_breaks_midway_is_translated() -> None:
    def chunks() -> Any:
        yield b"first"
        raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")

    stream = _errors.translated(chunks(), "Reading /data")
    assert next(stream) == b"first"
    with pytest.raises(EngineUnavailable, match="Reading /data: cannot reach"):
        next(stream)


def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError), _errors.translate("Doing it"):
        raise KeyError("not the engine's")


HERE = Owner("boot-a", "4026531836", 100, "5000")


def _labels(owner: Owner) -> dict[str, str]:
    return {"cargohold.helper": "true", LABEL_OWNER: owner.label()}


def test_helper_of_a_live_process_is_kept() -> None:
    other = Owner("boot-a", "4026531836", 200, "6000")
    assert not is_stale(_labels(other), 0.0, now=1e9, here=HERE, start_of=lambda pid: "6000")
    assert not is_stale(_labels(HERE), 0.0, now=1e9, here=HERE, start_of=lambda pid: "")


def test_helper_of_a_dead_process_is_stale_however_young() -> None:
    other = Owner("boot-a", "4026531836", 200, "6000")
    assert is_stale(_labels(other), 1e9, now=1e9 + 1, here=HERE, start_of=lambda pid: "")


def test_a_process_we_may_not_look_at_keeps_its_helper() -> None:
    other = Owner("boot-a", "4026531836", 200, "6000")
    assert not is_stale(_labels(other), 0.0, now=1e9, here=HERE, start_of=lambda pid: UNSEEN)


def test_process_start_of_real_processes() -> None:
    import os
    import subprocess

    assert process_start(os.getpid()) == this_process().start
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert process_start(child.pid) not in ("", UNSEEN)
    finally:
        child.kill()
        child.wait()
    assert process_start(child.pid) == ""  # reaped: no such process


def test_a_reused_pid_does_not_keep_a_helper_alive() -> None:
    other = Owner("boot-a", "4026531836", 200, "6000")
    assert is_stale(_labels(other), 1e9, now=1e9, here=HERE, start_of=lambda pid: "7777")


@pytest.mark.parametrize(
    "labels",
    [
        _labels(Owner("boot-b", "4026531836", 200, "6000")),  # another boot (or machine)
        _labels(Owner("boot-a", "4026532999", 200, "6000")),  # another pid namespace
        {"cargohold.helper": "true"},  # made by an older cargohold
        {"cargohold.helper": "true", LABEL_OWNER: "garbage"},
        {"cargohold.helper": "true", LABEL_OWNER: "boot-a:4026531836:0:1"},  # pid 0: no owner
    ],
)
def test_foreign_helpers_are_stale_only_when_old(labels: dict[str, str]) -> None:
    def never(pid: int) -> str:
        raise AssertionError("a foreign pid must not be looked up here")

    created = 1e9
    assert not is_stale(labels, created, now=created + FOREIGN_AGE - 60, here=HERE,
                        start_of=never)
    assert is_stale(labels, created, now=created + FOREIGN_AGE + 60, here=HERE, start_of=never)


def test_this_process_round_trips_through_its_label() -> None:
    me = this_process()
    assert Owner.from_label(me.label()) == me
    assert me.start not in ("", "unknown")


@pytest.mark.parametrize(
    "command", [["version"], ["plan"], ["render", "docker-run"], ["lint", "--help"]]
)
def test_commands_that_do_not_talk_to_docker_do_not_load_its_sdk(tmp_path: Path,
                                                                  command: list[str]) -> None:
    import subprocess
    import sys

    from tests.conftest import SRC

    (tmp_path / "cargohold.toml").write_text(
        '[project]\nname = "p"\n[stores.ckpt]\nkind = "checkpoints"\ntarget = "/ckpt"\n'
        '[jobs.train]\nimage = "img"\n'
    )
    code = (
        "import sys\nfrom cargohold.cli import main\n"
        f"code = main({command!r})\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'docker', 'requests'})\n"
        "print('LOADED', code, loaded)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
                            timeout=60)
    assert "LOADED 0 []" in result.stdout, result.stdout + result.stderr


def test_public_surface_is_what_all_says() -> None:
    import cargohold.engine as engine
    from cargohold.engine import types

    assert sorted(engine.__all__) == sorted(set(engine.__all__))
    for name in engine.__all__:
        assert hasattr(engine, name), name
    for name in types.__all__:
        assert getattr(engine, name) is getattr(types, name)
