"""The checkpoint mirror as Compose services: restore before the job, mirror beside it.

``<job>-mirror-restore`` fills an empty checkpoint volume from the mirror before the job starts
(``service_completed_successfully``; refused credentials stop the job from starting, an
unreachable mirror does not); ``<job>-mirror`` reads the volume read-only and pushes every
committed checkpoint until ``docker compose down``. Credentials are ``${AWS_…:-}`` from the shell
running Compose, never written into the file. Added after the document's ``$`` escaping, which
is why the spec's own values are escaped here by hand.
"""

from __future__ import annotations

from typing import Any

from cargohold.kinds import is_url
from cargohold.plan import Plan

__all__ = ["CREDENTIAL_ENV", "STATUS_PATH", "add_compose_mirrors", "literal"]

# Where a mirror sidecar keeps what it last did, for `cargohold ps` to read from the container.
STATUS_PATH = "/tmp/cargohold-mirror.json"

# What a mirror needs from the environment of whoever starts it; never written into a file.
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "CARGOHOLD_S3_ENDPOINT",
)


def literal(text: str) -> str:
    """A spec value in a Compose or stack file: ``$`` doubled, so nothing interpolates it."""
    return text.replace("$", "$$")


def add_compose_mirrors(document: dict[str, Any], plans: list[Plan], image: str) -> None:
    """Add the mirror services of every plan whose checkpoints store has ``mirror``."""
    services: dict[str, Any] = document["services"]
    for plan in plans:
        ckpt = plan.checkpoint_mount
        if ckpt is None or ckpt.mirror is None:
            continue
        env = {
            "CARGOHOLD_CHECKPOINT_DIR": literal(ckpt.target),
            "CARGOHOLD_MIRROR": literal(ckpt.mirror),
            **{name: "${" + name + ":-}" for name in CREDENTIAL_ENV},
        }
        volume = {"type": "volume", "source": ckpt.store, "target": literal(ckpt.target)}
        extra: list[dict[str, Any]] = []
        if not is_url(ckpt.mirror):
            # A folder of this host (absolute, the spec checks): bound at the same path, as
            # `cargohold run` does, so the mirror does not write into its own layer.
            extra.append(
                {
                    "type": "bind",
                    "source": literal(ckpt.mirror),
                    "target": literal(ckpt.mirror),
                    "bind": {"create_host_path": False},
                }
            )
        labels = {**{k: literal(v) for k, v in plan.labels}, "cargohold.role": "mirror"}
        restore_name, mirror_name = f"{plan.job}-mirror-restore", f"{plan.job}-mirror"
        job = services[plan.job]
        restore: dict[str, Any] = {
            "image": image,
            "user": plan.user,
            "command": ["cargohold", "mirror", "--restore-only"],
            "environment": env,
            "volumes": [volume, *extra],
            "labels": labels,
        }
        if "depends_on" in job:  # after the volume is prepared, like the job
            restore["depends_on"] = dict(job["depends_on"])
        services[restore_name] = restore
        services[mirror_name] = {
            "image": image,
            "user": plan.user,
            "command": ["cargohold", "mirror", "--status-file", STATUS_PATH],
            "environment": dict(env),
            "volumes": [{**volume, "read_only": True}, *extra],
            "labels": dict(labels),
            "depends_on": {restore_name: {"condition": "service_completed_successfully"}},
        }
        job["depends_on"] = {restore_name: {"condition": "service_completed_successfully"}}
