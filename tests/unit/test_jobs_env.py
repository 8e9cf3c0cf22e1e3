"""The job's environment: env files read as `docker run --env-file` reads them, secrets from the
caller's environment, and error messages that never repeat a line's content."""

from __future__ import annotations

from pathlib import Path

import pytest

from cargohold.errors import UsageError
from cargohold.jobs import job_environment, read_env_file
from cargohold.plan import make_plan
from cargohold.spec import parse_spec


def test_env_file_like_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_CALLER", "yes")
    monkeypatch.delenv("NOT_SET", raising=False)
    path = tmp_path / "e.env"
    path.write_text('# comment\n\n  LR=0.1\nQ="kept $HOME" \nEMPTY=\nFROM_CALLER\nNOT_SET\n')
    assert read_env_file(str(path)) == {"LR": "0.1", "Q": '"kept $HOME" ', "EMPTY": "",
                                        "FROM_CALLER": "yes"}


@pytest.mark.parametrize("line", ["=value", "export TOKEN=hunter2", "A B=hunter2"])
def test_bad_env_file_line_is_named_by_number_only(tmp_path: Path, line: str) -> None:
    path = tmp_path / "e.env"
    path.write_text(f"OK=1\n{line}\n")
    with pytest.raises(UsageError) as info:
        read_env_file(str(path))
    assert "line 2" in info.value.message and "hunter2" not in info.value.message
    assert info.value.exit_code == 2


def test_unreadable_env_file(tmp_path: Path) -> None:
    (tmp_path / "bin.env").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="Cannot read env file"):
        read_env_file(str(tmp_path / "bin.env"))
    with pytest.raises(UsageError, match="Cannot read env file"):
        read_env_file(str(tmp_path / "missing.env"))


def test_precedence_and_missing_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "e.env").write_text("SEED=from-file\nLR=0.1\n")
    spec = parse_spec(
        '[project]\nname = "p"\n[jobs.train]\nimage = "i"\nenv_file = "./e.env"\n'
        'env = { SEED = "from-spec" }\nsecrets = ["CHT_TOKEN", "CHT_ABSENT"]\n',
        base_dir=tmp_path,
    )
    plan = make_plan(spec, None, host_user=(0, 0))
    monkeypatch.setenv("CHT_TOKEN", "t0ken")
    monkeypatch.delenv("CHT_ABSENT", raising=False)
    said: list[str] = []
    env = job_environment(plan, said.append)
    assert env["SEED"] == "from-spec" and env["LR"] == "0.1" and env["CHT_TOKEN"] == "t0ken"
    assert "CHT_ABSENT" not in env
    assert said == ["secret CHT_ABSENT is not set in your environment; the job runs without it"]
    assert "t0ken" not in str(plan.to_json())
