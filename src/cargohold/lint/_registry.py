"""The rule registry: one small function per rule, registered with its id, severity and summary.

The rule list, the SARIF rule metadata and the README table are all generated from
:data:`REGISTRY`, so they cannot drift apart. A rule's docstring is its full description.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from cargohold.lint._model import Service, Text

__all__ = ["REGISTRY", "Finding", "Hit", "Rule", "Severity", "rule", "rules_table"]

Severity = Literal["error", "warning", "note"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "note": 2}


@dataclass(frozen=True)
class Hit:
    """What a rule found, before it is made a :class:`Finding`."""

    where: Text  # the value the finding is about: its file and line
    message: str
    fix: str
    evidence: tuple[str, ...] = ()
    subject: str = ""  # what it is about (a path, a mount): stable across edits, for fingerprints


@dataclass(frozen=True)
class Finding:
    """One finding, as the CLI prints it and SARIF carries it."""

    rule: str
    severity: Severity
    name: str
    message: str
    fix: str
    file: str
    line: int
    service: str
    evidence: tuple[str, ...] = field(default=())
    subject: str = ""
    help: str = ""


Check = Callable[[Service], Iterable[Hit]]


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    severity: Severity
    summary: str  # one line, for the table
    check: Check

    @property
    def description(self) -> str:
        return " ".join((self.check.__doc__ or self.summary).split()).replace("``", "`")

    @property
    def anchor(self) -> str:
        return f"README.md#{self.id.lower()}"


REGISTRY: dict[str, Rule] = {}


def rule(rule_id: str, name: str, severity: Severity, summary: str) -> Callable[[Check], Check]:
    """Registers the decorated function as the rule ``rule_id``."""

    def register(check: Check) -> Check:
        if rule_id in REGISTRY:
            raise ValueError(f"rule {rule_id} registered twice")
        REGISTRY[rule_id] = Rule(rule_id, name, severity, summary, check)
        return check

    return register


def rules_table() -> str:
    """The README's rule table, from the registry."""
    rows = [
        "| id | name | severity | finding |",
        "|---|---|---|---|",
        *(
            f'| <a id="{r.id.lower()}"></a>{r.id} | `{r.name}` | {r.severity} | {r.summary} |'
            for r in sorted(REGISTRY.values(), key=lambda r: r.id)
        ),
    ]
    return "\n".join(rows) + "\n"
