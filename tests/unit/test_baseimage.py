"""The base image build's quiet side: a short status per debootstrap line, the full output in a
log file, the log's tail in the error, and 'needs root' found before anything is attempted."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from cargohold import baseimage
from cargohold.errors import ImageNotFound


class NoEngine:
    """Any use of the engine is a failure: these paths must stop before reaching it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine was used: {name}")


def fake_debootstrap(tmp_path: Path, body: str) -> str:
    script = tmp_path / "debootstrap"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_status_names_the_phase_count_and_package() -> None:
    status = baseimage._DebootstrapStatus()
    # debootstrap's own lines, as a bookworm minbase build prints them.
    shown = [
        status.update(line)
        for line in [
            "W: no signature\n",
            "I: Retrieving InRelease \n",
            "I: Retrieving libacl1 2.3.1-3\n",
            "I: Validating libacl1 2.3.1-3\n",
            "I: Retrieving libc6 2.36-9+deb12u10\n",
            "I: Validating libc6 2.36-9+deb12u10\n",
            "I: Extracting libacl1...\n",
            "I: Unpacking required packages...\n",
            "I: Unpacking libc6:amd64...\n",
            "I: Configuring the base system...\n",
        ]
    ]
    assert shown == [
        None,
        "debootstrap: Retrieving InRelease",
        "debootstrap: downloading packages (1): libacl1",
        "debootstrap: checking packages (1/1): libacl1",
        "debootstrap: downloading packages (2): libc6",
        "debootstrap: checking packages (2/2): libc6",
        "debootstrap: extracting packages (1/2): libacl1",
        "debootstrap: Unpacking required packages",
        "debootstrap: unpacking packages (1/2): libc6",
        "debootstrap: Configuring the base system",
    ]


def test_not_root_is_found_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    tool = fake_debootstrap(tmp_path, f"touch {ran}\n")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageNotFound) as caught:
        baseimage.build_local_base(NoEngine(), debootstrap=tool, log_path=tmp_path / "log")  # type: ignore[arg-type]
    assert not ran.exists()
    assert "needs root" in str(caught.value)
    # The exact commands, for this very interpreter (the project's venv), run as root.
    assert caught.value.hint is not None
    assert f"sudo {sys.executable} -m cargohold base-image" in caught.value.hint
    assert "apt-get install" not in caught.value.hint


def test_missing_debootstrap_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baseimage, "_find_debootstrap", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageNotFound) as caught:
        baseimage.build_local_base(NoEngine())  # type: ignore[arg-type]
    assert "debootstrap is not installed" in str(caught.value)
    assert caught.value.hint is not None
    assert "sudo apt-get install -y debootstrap && sudo " in caught.value.hint


@pytest.mark.skipif(os.geteuid() != 0, reason="the build path runs only as root")
def test_a_failing_build_logs_everything_and_shows_its_tail(tmp_path: Path) -> None:
    tool = fake_debootstrap(
        tmp_path,
        'i=1; while [ $i -le 300 ]; do echo "I: Retrieving pkg$i 1.0"; i=$((i+1)); done\n'
        'echo "E: Couldn\'t download packages: pkg301" >&2\nexit 1\n',
    )
    log = tmp_path / "logs" / "base-image.log"
    said: list[str] = []
    progress: list[str] = []
    with pytest.raises(ImageNotFound) as caught:
        baseimage.build_local_base(
            NoEngine(),  # type: ignore[arg-type]
            debootstrap=tool,
            log_path=log,
            on_output=said.append,
            on_progress=progress.append,
        )
    text = log.read_text()
    assert text.count("I: Retrieving") == 300 and "E: Couldn't download" in text
    message = str(caught.value)
    assert str(log) in message and "exit 1" in message
    assert "E: Couldn't download packages: pkg301" in message
    assert "pkg300" in message and "pkg1 1.0" not in message  # the tail, not the whole log
    assert progress[-1] == "debootstrap: downloading packages (300): pkg300"
    assert len(said) == 1 and str(log) in said[0]  # one line says where the log is


def test_an_unwritable_log_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the build path runs only as root")
    blocker = tmp_path / "file"
    blocker.write_text("")
    tool = fake_debootstrap(tmp_path, "exit 0\n")
    with pytest.raises(ImageNotFound) as caught:
        baseimage.build_local_base(
            NoEngine(),  # type: ignore[arg-type]
            debootstrap=tool,
            log_path=blocker / "base-image.log",
        )
    assert "Cannot write the build log" in str(caught.value)
