"""Renderers against golden files, the Compose Specification schema, and `docker compose config`.

Set CARGOHOLD_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from cargohold.plan import make_plan
from cargohold.render import render_compose, render_docker_run
from cargohold.render.docker_run import mount_option
from cargohold.spec import parse_spec
from tests.unit.test_plan import ALL_KINDS

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CARGOHOLD_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; CARGOHOLD_UPDATE_GOLDEN=1 to accept"


def _plans():  # type: ignore[no-untyped-def]
    spec = parse_spec(ALL_KINDS, base_dir=Path("/p"))
    return [make_plan(spec, job, host_user=(1000, 1000)) for job in spec.jobs]


def test_docker_run_golden() -> None:
    _golden("docker-run.txt", render_docker_run(_plans()[0]) + "\n")


def test_docker_run_line_is_one_safely_quoted_line() -> None:
    spec = parse_spec(
        ALL_KINDS.replace('source = "./data"', "source = \"./da'ta, $(rm -rf ~)\""),
        base_dir=Path("/p"),
    )
    line = render_docker_run(make_plan(spec, "train", host_user=(1000, 1000)))
    assert "\n" not in line
    words = shlex.split(line)
    mount = next(w for w in words if w.startswith("type=bind") and "da'ta" in w)
    # Docker reads --mount as CSV: the comma inside the path is quoted, not a field separator.
    assert mount == "type=bind,\"source=/p/da'ta, $(rm -rf ~)\",target=/data,readonly"


def test_mount_option_for_tmpfs_and_driver() -> None:
    mounts = {m.store: m for m in _plans()[0].mounts}
    assert mount_option(mounts["tmp"]) == "type=tmpfs,target=/scratch,tmpfs-size=2147483648"
    assert "volume-opt=type=nfs" in mount_option(mounts["nfs"])


def test_compose_golden() -> None:
    _golden("compose.yml", yaml.safe_dump(render_compose(_plans()), sort_keys=False))


def _compose_schema() -> dict[str, object]:
    import check_jsonschema

    path = Path(check_jsonschema.__file__).parent / "builtin_schemas/vendor/compose-spec.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_compose_is_valid_against_the_compose_specification() -> None:
    import jsonschema

    jsonschema.validate(render_compose(_plans()), _compose_schema())


def _compose_binary() -> str:
    import compose

    return str(Path(compose.__file__).parent / "docker-compose")


def test_docker_compose_config_accepts_it(tmp_path: Path) -> None:
    for folder in ("data", "artifacts"):
        (tmp_path / folder).mkdir()
    spec = parse_spec(ALL_KINDS, base_dir=tmp_path)
    plans = [make_plan(spec, job, host_user=(1000, 1000)) for job in spec.jobs]
    compose_file = tmp_path / "compose.yml"
    compose_file.write_text(yaml.safe_dump(render_compose(plans), sort_keys=False))
    result = subprocess.run(
        [_compose_binary(), "-f", str(compose_file), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    train = config["services"]["train"]
    assert train["user"] == "1000:1000"
    assert {v["target"]: v.get("read_only", False) for v in train["volumes"]}["/data"] is True
    assert config["volumes"]["checkpoints"]["name"] == "proj-checkpoints"


def test_compose_without_plans_is_an_error() -> None:
    with pytest.raises(ValueError):
        render_compose([])


def _runtime_plans(base: Path = Path("/p")):  # type: ignore[no-untyped-def]
    from tests.unit.test_plan import RUNTIME

    spec = parse_spec(RUNTIME, base_dir=base)
    return [make_plan(spec, job, host_user=(1000, 1000)) for job in spec.jobs]


def test_runtime_settings_golden() -> None:
    plans = _runtime_plans()
    _golden("docker-run-runtime.txt", "\n".join(render_docker_run(p) for p in plans) + "\n")
    _golden("compose-runtime.yml", yaml.safe_dump(render_compose(plans), sort_keys=False))


def test_runtime_settings_in_the_docker_run_line() -> None:
    words = shlex.split(render_docker_run(_runtime_plans()[0]))
    run = len(words) - words[::-1].index("run")  # the job's own docker run
    job = words[run:]
    assert job[job.index("--gpus") + 1] == '"device=0,GPU-4a1b"'  # CSV-quoted for Docker
    assert "memlock=-1" in job and "stack=67108864" in job and "nofile=4096:8192" in job
    assert job[job.index("--stop-timeout") + 1] == "120"
    assert job[job.index("--entrypoint") + 1] == "python3"
    assert job[-4:] == ["pytorch-train", "-u", "torchrun", "train.py"]
    assert "--read-only" in job and job[job.index("--tmpfs") + 1] == "/tmp"
    assert job[job.index("--env-file") + 1] == "/p/train.env"
    assert "HF_TOKEN" in job  # a name without a value: Docker takes the caller's
    seed = next(w for w in words if w.startswith("if ["))
    assert "cp -a /cargohold-seed/0/from/. /cargohold-seed/0/to/" in seed
    assert "[ -e /cargohold-seed/0/to/.cargohold-seeding ]" in seed  # a killed copy is redone


def test_renders_never_hold_a_secret_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret")
    plans = _runtime_plans()
    assert "hf_supersecret" not in render_docker_run(plans[0])
    assert "hf_supersecret" not in yaml.safe_dump(render_compose(plans))


def test_compose_escapes_dollars_from_the_spec() -> None:
    spec = parse_spec(ALL_KINDS.replace('HF_HOME = "/elsewhere"', 'HF_HOME = "/a$HOME"'),
                      base_dir=Path("/p"))
    document = render_compose([make_plan(spec, "train", host_user=(1000, 1000))])
    assert document["services"]["train"]["environment"]["HF_HOME"] == "/a$$HOME"


def test_docker_compose_config_accepts_runtime_settings(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "train.env").write_text('LR=0.1\nQ="as $HOME is"\n')
    plans = _runtime_plans(tmp_path)
    document = render_compose(plans)
    jsonschema_validate(document)
    compose_file = tmp_path / "compose.yml"
    compose_file.write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run(
        [_compose_binary(), "-f", str(compose_file), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "HF_TOKEN": "hf_x", "WANDB_API_KEY": "w"},
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    train = config["services"]["train"]
    assert train["gpus"] == [{"device_ids": ["0", "GPU-4a1b"]}]
    assert config["services"]["shell"]["gpus"] == [{"count": -1}]
    assert train["stop_grace_period"] == "2m0s"
    assert train["ulimits"]["memlock"] == {"single": -1} or train["ulimits"]["memlock"] == -1
    assert train["environment"]["LR"] == "0.1"  # the env file was read by Compose itself
    # ... literally, as docker run --env-file reads it: quotes kept, nothing interpolated.
    assert train["environment"]["Q"] == '"as $$HOME is"'
    assert train["entrypoint"] == ["python3"] and train["command"][0] == "-u"
    seed = config["services"]["train-seed"]
    assert "$(ls -A" in seed["command"][1]  # $$ became $ again, nothing interpolated
    assert train["depends_on"]["train-prepare"]["condition"] == "service_completed_successfully"
    assert config["services"]["train-prepare"]["depends_on"]["train-seed"]


def jsonschema_validate(document: dict[str, object]) -> None:
    import jsonschema

    jsonschema.validate(document, _compose_schema())
