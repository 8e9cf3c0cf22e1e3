"""What must happen before a job's container starts, shared by every renderer and the runner.

A fresh named volume is owned by root, so a job that runs as the host user could not write its
checkpoints. One short container, run as root, hands the top of each writable volume (and of each
artifacts folder, which an explicit ``user = "UID:GID"`` may not own) to the job's user. External
volumes are left as they are: they belong to someone else.

A volume seeded from a host folder is filled by another short root container, once: while the
volume is empty. It mounts the volume and the folder at paths no image has, so that Docker's
copy-up of image content into a fresh volume cannot make it look filled. A marker file lives in
the volume only while the copy runs: a copy that was killed half-way leaves it, and the next run
copies again instead of taking a partial dataset for a seeded one.
"""

from __future__ import annotations

from dataclasses import replace

from cargohold.kinds import Backing, StoreKind
from cargohold.plan import Mount, Plan

__all__ = [
    "SEED_MARKER",
    "SEED_ROOT",
    "seed_mounts",
    "seed_script",
    "stores_to_chown",
    "volumes_to_chown",
]

SEED_ROOT = "/cargohold-seed"
SEED_MARKER = ".cargohold-seeding"


def volumes_to_chown(plan: Plan) -> list[Mount]:
    """The writable, cargohold-owned volumes whose top folder the job's user must own."""
    if plan.uid == 0:
        return []
    return [m for m in plan.volumes() if not m.readonly and not m.external]


def stores_to_chown(plan: Plan) -> list[Mount]:
    """The volumes of ``volumes_to_chown`` plus the writable artifacts folders when the job runs
    as someone else than the invoking user (who creates those folders)."""
    if plan.uid == 0 or plan.as_invoking_user:
        return volumes_to_chown(plan)
    folders = [
        m
        for m in plan.mounts
        if m.backing is Backing.BIND and m.kind is StoreKind.ARTIFACTS and not m.readonly
    ]
    return [*volumes_to_chown(plan), *folders]


def _seeded(plan: Plan) -> list[Mount]:
    return [m for m in plan.volumes() if m.seed is not None]


def seed_mounts(plan: Plan) -> list[Mount]:
    """The mounts of the seeding helper: each seed folder read-only and its volume, side by side;
    empty when nothing is seeded."""
    mounts: list[Mount] = []
    for index, mount in enumerate(_seeded(plan)):
        assert mount.seed is not None
        mounts.append(
            Mount(
                store=mount.store,
                kind=mount.kind,
                backing=Backing.BIND,
                target=f"{SEED_ROOT}/{index}/from",
                readonly=True,
                reason="seed",
                source=mount.seed,
            )
        )
        mounts.append(replace(mount, target=f"{SEED_ROOT}/{index}/to", readonly=False))
    return mounts


def seed_script(plan: Plan) -> str | None:
    """The POSIX shell script of the seeding helper: copy each folder into its volume when the
    volume is empty. None when nothing is seeded."""
    steps = []
    for i in range(len(_seeded(plan))):
        src, dst = f"{SEED_ROOT}/{i}/from", f"{SEED_ROOT}/{i}/to"
        steps.append(
            f'if [ -z "$(ls -A {dst})" ] || [ -e {dst}/{SEED_MARKER} ]; then '
            f"touch {dst}/{SEED_MARKER} && cp -a {src}/. {dst}/ && rm {dst}/{SEED_MARKER}; fi"
        )
    return " && ".join(steps) if steps else None
