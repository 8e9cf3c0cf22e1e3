"""ML data-loss and safety rules for compose files and ``docker run`` lines.

First the input is resolved the way Compose resolves it (:mod:`._compose`, :mod:`._yaml`) or
parsed the way a shell reads it (:mod:`._dockerrun`) into one model (:mod:`._model`); then each
registered rule (:mod:`._rules`, one function per rule) reads that model and the evidence about
it (:mod:`._evidence`, :mod:`._images`, :mod:`._dockerfile`). Findings carry their evidence and
can be suppressed inline with ``# cargohold: ignore CH004`` on the line or on the service's key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cargohold.errors import UsageError
from cargohold.lint import _rules  # noqa: F401 - registers the rules
from cargohold.lint._compose import add_image_volumes, compose_services, override_for
from cargohold.lint._compose_binary import compose_model, overlay
from cargohold.lint._dockerrun import docker_run_services
from cargohold.lint._model import Service
from cargohold.lint._registry import REGISTRY, SEVERITY_ORDER, Finding, Rule, rules_table
from cargohold.lint._rules import describe_image
from cargohold.lint._sarif import fingerprint, sarif_log

__all__ = [
    "REGISTRY",
    "Finding",
    "Report",
    "Rule",
    "fingerprint",
    "lint",
    "lint_compose",
    "lint_docker_run",
    "rules_table",
    "sarif_log",
    "select_rules",
]

_IGNORE = re.compile(r"#\s*cargohold:\s*ignore\b([^#\n]*)", re.IGNORECASE)
_RULE_ID = re.compile(r"CH\d{3}", re.IGNORECASE)


@dataclass
class Report:
    """Findings of one lint run, and notes on what could not be checked."""

    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inputs: int = 0
    suppressed: int = 0
    resolver: str = "cargohold"  # "compose" when the Compose binary resolved the project

    def extend(self, other: Report) -> None:
        self.findings += other.findings
        self.notes += other.notes
        self.inputs += other.inputs
        self.suppressed += other.suppressed
        self.resolver = other.resolver


def select_rules(select: list[str] | None, ignore: list[str] | None) -> set[str]:
    """The rule ids to run: ``select`` (default all) less ``ignore``; ids or names, any case.

    Raises:
        UsageError: an id or name that is not a rule.
    """
    by_name = {r.name: r.id for r in REGISTRY.values()}

    def ids(values: list[str] | None) -> set[str]:
        result: set[str] = set()
        for value in values or []:
            for item in value.split(","):
                item = item.strip()
                if not item:
                    continue
                rule_id = item.upper() if item.upper() in REGISTRY else by_name.get(item.lower())
                if rule_id is None:
                    raise UsageError(
                        f"No lint rule {item!r}.",
                        hint=f"Rules: {', '.join(sorted(REGISTRY))}.",
                    )
                result.add(rule_id)
        return result

    chosen = ids(select) or set(REGISTRY)
    return chosen - ids(ignore)


def _suppressions(file: str) -> dict[int, set[str] | None]:
    """line -> rules ignored there (None: every rule), from ``# cargohold: ignore …``."""
    result: dict[int, set[str] | None] = {}
    try:
        lines = Path(file).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return result
    for number, line in enumerate(lines, 1):
        match = _IGNORE.search(line)
        if not match:
            continue
        rules = {r.upper() for r in _RULE_ID.findall(match.group(1))}
        target = number
        if line.lstrip().startswith("#"):  # a comment line applies to the next line
            target = number + 1
        result[target] = rules or None
    return result


def _suppressed(
    finding: Finding,
    service: Service,
    cache: dict[str, dict[int, set[str] | None]],
    texts: dict[str, str],
) -> bool:
    places = [(finding.file, finding.line), (service.where.file, service.where.line)]
    for file, line in places:
        table = cache.get(file)
        if table is None:  # read and scanned once per file, not once per finding
            table = _text_suppressions(texts[file]) if file in texts else _suppressions(file)
            cache[file] = table
        if line in table:
            rules = table[line]
            if rules is None or finding.rule in rules:
                return True
    return False


def _text_suppressions(text: str) -> dict[int, set[str] | None]:
    result: dict[int, set[str] | None] = {}
    for number, line in enumerate(text.splitlines() or [text], 1):
        match = _IGNORE.search(line)
        if match:
            rules = {r.upper() for r in _RULE_ID.findall(match.group(1))}
            result[number] = rules or None
    return result


def _run(services: list[Service], rules: set[str], texts: dict[str, str]) -> Report:
    report = Report()
    cache: dict[str, dict[int, set[str] | None]] = {}
    unchecked = False
    for service in services:
        note = describe_image(service)
        if note:
            report.notes.append(note)
        unchecked |= (
            service.where.file != "docker-run"
            and not service.checkout
            and any(
                m.kind == "bind"
                and m.source
                and service.base_dir.resolve() in Path(m.source).parents
                for m in service.mounts
            )
        )
        for rule in sorted(REGISTRY.values(), key=lambda r: r.id):
            if rule.id not in rules:
                continue
            for hit in rule.check(service):
                finding = Finding(
                    rule=rule.id,
                    severity=rule.severity,
                    name=rule.name,
                    message=hit.message,
                    fix=hit.fix,
                    file=hit.where.file or service.where.file,
                    line=hit.where.line or service.where.line,
                    service=service.name,
                    evidence=hit.evidence,
                    subject=hit.subject,
                    help=rule.anchor,
                )
                if _suppressed(finding, service, cache, texts):
                    report.suppressed += 1
                else:
                    report.findings.append(finding)
    if unchecked:
        report.notes.append(
            f"bind sources were not checked: none of the relative paths in {services[0].where.file}"
            " exists beside it (run lint in the project's folder to check them)"
        )
    report.findings.sort(key=lambda f: (f.file, f.line, SEVERITY_ORDER[f.severity], f.rule))
    return report


def lint_compose(files: list[Path], rules: set[str] | None = None) -> Report:
    """Findings for one compose project (later files override earlier ones; the override file
    beside a default-named file is added, as ``docker compose up`` adds it).

    Raises:
        UsageError: a file is unreadable, not YAML, or not a compose file.
    """
    paths = list(files)
    if len(paths) == 1 and (extra := override_for(paths[0])) is not None:
        paths.append(extra)
    services = compose_services(paths)  # also the validation: a clear error for a bad file
    model, refused = compose_model(paths)
    if model is not None:
        services = overlay(services, model)
    add_image_volumes(services)
    report = _run(services, set(REGISTRY) if rules is None else rules, {})
    report.resolver = "compose" if model is not None else "cargohold"
    if refused:
        report.notes.append(
            f"Compose refused {paths[0]} ({refused}); linted with cargohold's own resolver."
        )
    report.inputs = 1
    return report


def lint_docker_run(
    text: str, rules: set[str] | None = None, *, file: str = "docker-run", cwd: Path | None = None
) -> Report:
    """Findings for every ``docker run`` in ``text`` (a line, or a script).

    Raises:
        UsageError: no ``docker run`` in the text, or one without an image.
    """
    services = docker_run_services(text, file, cwd)
    texts = {file: text} if file == "docker-run" else {}
    report = _run(services, set(REGISTRY) if rules is None else rules, texts)
    report.inputs = 1
    return report


def _is_compose(path: Path) -> bool:
    if path.suffix.lower() in (".yml", ".yaml"):
        return True
    if path.suffix.lower() in (".sh", ".bash", ".txt", ".md", ".zsh", ".ps1") or path.name in (
        "Makefile",
        "Dockerfile",
    ):
        return False
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError as exc:
        raise UsageError(
            f"Cannot read {path}: {exc.strerror or exc}.", hint="Check the path."
        ) from None
    return bool(re.search(r"^services\s*:", head, re.MULTILINE))


def lint(
    files: list[Path],
    docker_runs: list[str],
    *,
    select: list[str] | None = None,
    ignore: list[str] | None = None,
    merge: bool = False,
) -> Report:
    """Lint compose files (each its own project, or one project with ``merge``), scripts
    holding ``docker run`` lines, and ``docker run`` lines given as text.

    Raises:
        UsageError: nothing to lint, an unknown rule, or an input lint cannot read.
    """
    if not files and not docker_runs:
        raise UsageError(
            "Nothing to lint.", hint='Give compose files, or --docker-run "docker run …".'
        )
    rules = select_rules(select, ignore)
    report = Report()
    compose = [p for p in files if _is_compose(p)]
    scripts = [p for p in files if p not in compose]
    if merge and compose:
        report.extend(lint_compose(compose, rules))
    else:
        for path in compose:
            report.extend(lint_compose([path], rules))
    for path in scripts:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UsageError(
                f"Cannot read {path}: {exc.strerror or exc}.", hint="Check the path."
            ) from None
        report.extend(lint_docker_run(text, rules, file=str(path), cwd=path.resolve().parent))
    for line in docker_runs:
        report.extend(lint_docker_run(line, rules))
    # A file reached twice (included by one input, given as another) reports its findings once.
    report.findings = list(dict.fromkeys(report.findings))
    report.notes = list(dict.fromkeys(report.notes))
    return report
