"""What must happen before a job's container starts, shared by every renderer and the runner.

A fresh named volume is owned by root, so a job that runs as the host user could not write its
checkpoints. One short container, run as root, hands the top of each writable volume to the job's
user. External volumes are left as they are: they belong to someone else.
"""

from __future__ import annotations

from cargohold.plan import Mount, Plan

__all__ = ["volumes_to_chown"]


def volumes_to_chown(plan: Plan) -> list[Mount]:
    """The writable, cargohold-owned volumes whose top folder the job's user must own."""
    if plan.uid == 0:
        return []
    return [m for m in plan.volumes() if not m.readonly and not m.external]
