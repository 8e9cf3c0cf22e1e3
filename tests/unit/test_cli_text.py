"""Issue 8, defect 12: user text (paths, names, hints) is printed as it is, never read as rich
markup: "[...]" does not vanish, "[/]" does not crash, ":thumbs_up:" stays text. Runs the real
CLI; no daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

WEIRD = ["[bold]data[/]", "a[/]b", "[red]", "x[/red]y", "[link=x]l[/link]", ":thumbs_up:"]


def _spec_with_dataset(folder: Path, source: str) -> None:
    (folder / "cargohold.toml").write_text(
        f'[project]\nname = "p"\n[stores.dataset]\nkind = "dataset"\nsource = "./{source}"\n'
        'target = "/data"\n[jobs.train]\nimage = "img"\n'
    )


@pytest.mark.parametrize("name", WEIRD)
def test_error_message_and_hint_keep_brackets(tmp_path: Path, name: str) -> None:
    _spec_with_dataset(tmp_path, name)
    result = run_cli("plan", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error, hint = result.stderr.splitlines()[:2]
    assert error.startswith("error: ") and f"{tmp_path}/{name} does not exist" in error
    assert hint.startswith("hint: ") and f"{tmp_path}/{name}" in hint


def test_a_missing_spec_path_with_markup_is_printed_literally(tmp_path: Path) -> None:
    spec = tmp_path / "[/]" / "cargohold.toml"
    result = run_cli("plan", "-f", str(spec))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(spec) in result.stderr


def test_plan_output_keeps_brackets(tmp_path: Path) -> None:
    (tmp_path / "[in]").mkdir()
    _spec_with_dataset(tmp_path, "[in]")
    result = run_cli("plan", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path}/[in] -> /data" in result.stdout
