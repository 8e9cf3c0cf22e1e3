"""lint on a corpus of realistic compose files, sound and unsound, and on docker run lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cargohold.errors import UsageError
from cargohold.lint import RULES, lint_compose_file, lint_docker_run, sarif
from tests.conftest import run_cli

CORPUS = Path(__file__).resolve().parent.parent / "lint_corpus"
FILES = sorted(CORPUS.glob("*.yml"))


def _expected(path: Path) -> set[str]:
    header = path.read_text().splitlines()[0]
    match = re.match(r"# expect:(.*)", header)
    assert match, f"{path.name} must start with '# expect: RULE, …'"
    return {r.strip() for r in match.group(1).split(",") if r.strip()}


def test_corpus_has_sound_and_unsound_files() -> None:
    expectations = [_expected(p) for p in FILES]
    assert len(FILES) >= 8
    assert any(not e for e in expectations) and any(e for e in expectations)
    assert set().union(*expectations) == set(RULES)  # every rule is exercised


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_corpus_file_gets_exactly_its_expected_findings(path: Path) -> None:
    findings = lint_compose_file(path)
    assert {f.rule for f in findings} == _expected(path), [f.message for f in findings]
    lines = path.read_text().splitlines()
    for f in findings:
        assert 1 <= f.line <= len(lines) and f.fix and f.severity in ("error", "warning")


def test_lines_point_at_the_offending_entry() -> None:
    findings = {f.rule: f for f in lint_compose_file(CORPUS / "dind-privileged.yml")}
    lines = (CORPUS / "dind-privileged.yml").read_text().splitlines()
    assert "docker.sock" in lines[findings["CH009"].line - 1]
    assert "privileged" in lines[findings["CH010"].line - 1]


@pytest.mark.parametrize(
    ("line", "rules"),
    [
        ("docker run --rm --shm-size 2g -u 1000:1000 -v ckpt:/ckpt -v data:/data:ro img "
         "python train.py --save-dir /ckpt --num_workers 4", set()),
        ("docker run -v data:/data img python train.py --save_dir out", {"CH001", "CH004"}),
        ("docker run --privileged -v /var/run/docker.sock:/var/run/docker.sock img", {"CH009",
                                                                                     "CH010"}),
        ("docker run --tmpfs /checkpoints --mount type=volume,target=/x img", {"CH003", "CH005"}),
        ("docker run -e TORCH_HOME=/root/.cache/torch pytorch/pytorch python x.py",
         {"CH002", "CH008"}),
        ("docker run --ipc=host -v /definitely/missing:/in:ro img torchrun x.py", {"CH006"}),
    ],
)
def test_docker_run_lines(line: str, rules: set[str]) -> None:
    assert {f.rule for f in lint_docker_run(line)} == rules


def test_bad_inputs_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.yml").write_text("services: [unclosed\n")
    (tmp_path / "notcompose.yml").write_text("just: a mapping\n")
    for name in ("broken.yml", "notcompose.yml", "missing.yml"):
        with pytest.raises(UsageError):
            lint_compose_file(tmp_path / name)
    with pytest.raises(UsageError, match="No image"):
        lint_docker_run("docker run --rm")


def test_cli_exit_codes_and_formats() -> None:
    sound, unsound = CORPUS / "sound-train.yml", CORPUS / "dind-privileged.yml"
    ok = run_cli("lint", str(sound))
    assert ok.returncode == 0 and "no findings" in ok.stdout
    bad = run_cli("lint", str(unsound), "--json")
    assert bad.returncode == 1
    assert {f["rule"] for f in json.loads(bad.stdout)} == {"CH009", "CH010"}
    report = run_cli("lint", str(unsound), "--sarif")
    log = json.loads(report.stdout)
    assert log["version"] == "2.1.0"
    assert sorted(r["ruleId"] for r in log["runs"][0]["results"]) == ["CH009", "CH010"]
    nothing = run_cli("lint")
    assert nothing.returncode == 2 and "hint:" in nothing.stderr


def test_sarif_lists_every_rule() -> None:
    assert len(sarif([])["runs"][0]["tool"]["driver"]["rules"]) == len(RULES)
