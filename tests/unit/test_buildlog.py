"""Build logs: a safe file name in the user's cache folder; every line kept, and passed on."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from cargohold.buildlog import LineLog, default_log_path


def test_the_log_lives_in_the_cache_folder_under_a_safe_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_log_path("base-image") == tmp_path / "cargohold" / "base-image.log"
    assert default_log_path("build-registry:5000/team/img:v1") == (
        tmp_path / "cargohold" / "build-registry-5000-team-img-v1.log"
    )
    assert default_log_path("../..") == tmp_path / "cargohold" / "build.log"


def test_lines_go_to_the_file_and_on_to_the_status(tmp_path: Path) -> None:
    seen: list[str] = []
    path = tmp_path / "deep" / "build.log"
    with LineLog(path, then=seen.append) as log:
        log("Step 1/2 : FROM base\n")
        log("Step 2/2 : RUN false")
        log.record("The command '/bin/sh -c false' returned a non-zero code: 1")
    assert log.path == path
    assert seen == ["Step 1/2 : FROM base\n", "Step 2/2 : RUN false"]
    assert path.read_text().splitlines() == [
        "Step 1/2 : FROM base",
        "Step 2/2 : RUN false",
        "The command '/bin/sh -c false' returned a non-zero code: 1",
    ]


def test_an_unwritable_log_goes_to_the_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    spare = tmp_path / "tmp"
    spare.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spare))
    seen: list[str] = []
    with LineLog(blocker / "build.log", then=seen.append) as log:
        log("Step 1/1 : FROM base")
        log.record("kept")
    assert log.path is not None and log.path.parent == spare
    assert log.path.name.startswith("cargohold-build-") and log.path.suffix == ".log"
    assert log.path.read_text() == "Step 1/1 : FROM base\nkept\n"
    assert seen == ["Step 1/1 : FROM base"]


def test_a_log_that_cannot_be_written_anywhere_still_passes_lines_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(blocker / "nowhere"))
    seen: list[str] = []
    with LineLog(blocker / "build.log", then=seen.append) as log:
        log("Step 1/1 : FROM base")
        log.record("ignored")
    assert log.path is None
    assert seen == ["Step 1/1 : FROM base"]
