"""Long builds on the real engine: quiet, with the full log in a file. The base image is built
with a stand-in for debootstrap (the real one downloads 130 packages; CI builds the real image
once, through `make test`'s set-up)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from cargohold import baseimage
from cargohold.engine import connect
from tests.conftest import Resources, run_cli

# Prints what debootstrap prints, and makes a root file system with a `python3` in it.
FAKE_DEBOOTSTRAP = """#!/bin/sh
root=$4
for p in libc6 python3 python3-numpy; do echo "I: Retrieving $p 1.0"; done
mkdir -p "$root/usr/bin" "$root/var/cache/apt/archives" "$root/var/lib/apt/lists"
printf '#!/bin/sh\\necho fake python\\n' > "$root/usr/bin/python3"
chmod 755 "$root/usr/bin/python3"
echo "I: Base system installed successfully."
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap runs only as root")
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


def test_a_failing_image_build_names_its_full_log(
    tmp_path: Path, base_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    project = docker_resources.project
    image = f"{project}-img"
    docker_resources.images.append(image)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base_image}\nRUN echo step-one-output {project}\n"
        "RUN echo the-last-words && false\n"
    )
    (tmp_path / "cargohold.toml").write_text(
        f'[project]\nname = "{project}"\n\n[jobs.train]\nimage = "{image}"\nbuild = "."\n'
        'command = ["true"]\n'
    )
    cache = tmp_path / "cache"
    try:
        result = run_cli("run", cwd=tmp_path, env={"XDG_CACHE_HOME": str(cache)})
    finally:
        # The step that succeeded stays in the engine as an untagged cache image: this
        # test's own (its step names the project) goes with the test.
        for leftover in docker_client.images.list(filters={"dangling": True}):
            if any(project in (step.get("CreatedBy") or "") for step in leftover.history()):
                docker_client.images.remove(leftover.id, force=True)
    log = cache / "cargohold" / f"build-{image}.log"
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert f"(log: {log})" in result.stderr  # said before the build started
    assert f"Full log: {log}" in result.stderr  # and again with the failure
    text = log.read_text()
    assert "step-one-output" in text and "the-last-words" in text
    assert "returned a non-zero code: 1" in text  # the engine's own error line
