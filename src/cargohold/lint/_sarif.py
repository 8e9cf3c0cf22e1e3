"""SARIF 2.1.0 for code-scanning tools, with rule metadata from the registry.

Carries what GitHub code scanning needs: every rule with its short and full description and
help, each result's level, location and ``partialFingerprints`` (from the rule, the file's
relative path, the service and the finding's subject -- not the line, so a finding keeps its
identity when lines move), and the evidence in the result's properties. Rules carry no
``helpUri``: it must be absolute, and the project declares no homepage to anchor it to.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cargohold.lint._registry import REGISTRY, Finding

__all__ = ["fingerprint", "sarif_log"]

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def fingerprint(finding: Finding) -> str:
    """A hash that identifies a finding across edits that only move lines: the rule, the file
    as the result's location names it (its path relative to the working directory, so
    ``a/compose.yaml`` and ``b/compose.yaml`` differ), the service and the subject."""
    key = "\0".join((finding.rule, _uri(finding.file), finding.service, finding.subject))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _uri(file: str) -> str:
    path = Path(file)
    if path.is_absolute():
        try:
            return path.relative_to(Path.cwd()).as_posix()
        except ValueError:
            return path.as_uri()
    return path.as_posix()


def sarif_log(findings: list[Finding], notes: list[str], version: str) -> dict[str, Any]:
    """A SARIF 2.1.0 log of ``findings``."""
    rules = sorted(REGISTRY.values(), key=lambda r: r.id)
    index = {r.id: i for i, r in enumerate(rules)}
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "cargohold lint",
                        "semanticVersion": version,
                        "rules": [
                            {
                                "id": r.id,
                                "name": r.name,
                                "shortDescription": {"text": r.summary},
                                "fullDescription": {"text": r.description},
                                "help": {
                                    "text": f"{r.description} (cargohold's {r.anchor})",
                                    "markdown": f"{r.description}\n\nSee `{r.anchor}`.",
                                },
                                "defaultConfiguration": {"level": r.severity},
                                # helpUri must be absolute; the anchor is in the README
                                "properties": {"tags": ["ml", "data-loss"], "helpAnchor": r.anchor},
                            }
                            for r in rules
                        ],
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "toolExecutionNotifications": [
                            {"level": "note", "message": {"text": note}} for note in notes
                        ],
                    }
                ],
                "results": [
                    {
                        "ruleId": f.rule,
                        "ruleIndex": index[f.rule],
                        "level": f.severity,
                        "message": {
                            "text": f"{f.message} Evidence: {'; '.join(f.evidence)}. Fix: {f.fix}"
                        },
                        "locations": [
                            {
                                "physicalLocation": {
                                    "artifactLocation": {"uri": _uri(f.file)},
                                    "region": {"startLine": max(f.line, 1)},
                                },
                                "logicalLocations": [{"name": f.service, "kind": "object"}],
                            }
                        ],
                        "partialFingerprints": {"cargoholdFinding/v1": fingerprint(f)},
                        "properties": {"evidence": list(f.evidence), "service": f.service},
                    }
                    for f in findings
                ],
            }
        ],
    }
