"""The base image build end to end on the real engine, with a stand-in for debootstrap (the
real one downloads 130 packages; CI builds the real image once, through `make test`'s set-up)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from cargohold import baseimage
from cargohold.engine import connect
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap runs only as root")

# Prints what debootstrap prints, and makes a root file system with a `python3` in it.
FAKE_DEBOOTSTRAP = """#!/bin/sh
root=$4
for p in libc6 python3 python3-numpy; do echo "I: Retrieving $p 1.0"; done
mkdir -p "$root/usr/bin" "$root/var/cache/apt/archives" "$root/var/lib/apt/lists"
printf '#!/bin/sh\\necho fake python\\n' > "$root/usr/bin/python3"
chmod 755 "$root/usr/bin/python3"
echo "I: Base system installed successfully."
"""


def test_build_imports_the_root_file_system_quietly(tmp_path: Path, docker_client: Any) -> None:
    tool = tmp_path / "debootstrap"
    tool.write_text(FAKE_DEBOOTSTRAP)
    tool.chmod(0o755)
    name = f"cargohold-test/python:{secrets.token_hex(4)}"
    log = tmp_path / "base-image.log"
    said: list[str] = []
    progress: list[str] = []
    engine = connect()
    try:
        baseimage.build_local_base(
            engine, name=name, debootstrap=str(tool), log_path=log, on_output=said.append,
            on_progress=progress.append,
        )
        image = docker_client.images.get(name)
        assert image.labels.get("cargohold.base") == "debootstrap-bookworm"
        assert "I: Base system installed successfully." in log.read_text()
        assert said == [said[0], f"Built {name}"] and str(log) in said[0]
        assert "debootstrap: downloading packages (3): python3-numpy" in progress
        assert progress[-1] == f"importing the root file system as {name}"
    finally:
        engine.remove_image(name)


def test_base_image_command_in_a_pipe_prints_only_the_name(base_image: str) -> None:
    # The image exists (the base_image fixture made sure): nothing to show but its name.
    result = run_cli("base-image", timeout=900)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == base_image
    assert result.stderr == ""
