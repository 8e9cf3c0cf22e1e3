"""Render a plan as Kubernetes objects: claims, a headless Service for several nodes, a Job.

Stores map onto what a pod has: a named volume (or a host folder, which cannot follow the job to
another node) becomes a PersistentVolumeClaim — ``ReadWriteMany`` when several pods of the job
share it; scratch becomes an ``emptyDir``; ``shm_size`` a memory ``emptyDir`` at ``/dev/shm``. The
pod runs as the plan's user with ``fsGroup`` and ``fsGroupChangePolicy: OnRootMismatch``, so a
fresh claim is writable without the recursive chown that stalls pod start on a big volume
(kubernetes#69699).

``nodes = N`` gives an Indexed Job and a headless Service: pod ``i`` is reachable as
``<job>-i.<service>``, so ``torchrun --nnodes N --node-rank $JOB_COMPLETION_INDEX
--rdzv-endpoint $CARGOHOLD_RDZV_ENDPOINT`` works unchanged.

Data that follows the job: a dataset with ``repository``/``snapshot`` is restored by an
initContainer into the folder ``content`` of its claim before the job starts; a checkpoints store
with ``mirror`` gets an initContainer that restores the newest mirrored checkpoint into an empty
store, and a sidecar that pushes every committed checkpoint. A volume with a ``snapshots``
schedule (and an ``s3://`` repository) gets a sidecar that snapshots its claim, read-only, as
``cargohold snapshot TARGET --as-volume VOLUME --every …``, and takes a last snapshot when the
job's processes have ended.

The dataset restore is correct on a retried pod, because what the claim holds is recorded, not
guessed from whether it is empty. Two small versioned records sit in the claim beside ``content``:
``.cargohold-restoring`` (written before the restore starts: this claim's ``content`` is
cargohold's, for this repository and snapshot) and ``.cargohold-restored`` (written, by rename,
only after ``cargohold restore`` has exited 0). Each holds ``cargohold-restore 1`` and the
repository and snapshot, compared byte for byte. So:

* ``.cargohold-restored`` matches: the restore is complete; nothing is done (a retried pod starts
  at once).
* ``.cargohold-restoring`` matches but no completion: a pod was killed mid-restore (or between
  the end of the restore and the record). ``cargohold restore --force`` runs again: it finishes
  or cleans its own interrupted staging and replaces whatever partial content is there -- safe,
  because the record says that content is cargohold's restore of this very snapshot.
* Anything else in the claim (data cargohold did not restore, or records of another repository
  or snapshot, e.g. after the spec changed) fails the pod with a message naming the claim. It is
  not used as the dataset, and it is not overwritten or restored beside: the claim may hold the
  user's only copy of something, and restoring beside it would silently double the claim's use.
  Delete the claim (or point the store at a new one) to restore afresh.

With ``nodes > 1`` every pod shares the ``ReadWriteMany`` claim, so only completion index 0
restores; every other pod waits (polling every 2 s, at most ``CARGOHOLD_RESTORE_WAIT`` seconds,
then fails saying so) for index 0's completion record. Waiting on the record rather than electing
a restorer with a lock needs nothing but the claim itself, and a lock on a network filesystem
(NFS, CephFS) is exactly what cannot be trusted. The checkpoint mirror restore is handled the
same way: index 0 runs ``cargohold mirror --restore-only`` then writes
``.cargohold-mirror-restored`` into the store, naming the Job's uid (label ``controller-uid``), so
a record left by an earlier Job on the same claim is not mistaken for this one's; the other pods
wait for it. (The mirror only takes ``step-N/``, ``checkpoint-N/`` and ``*.ckpt`` for
checkpoints, so the record is never mistaken for one.) Likewise only index 0's sidecar pushes:
the store is one shared claim, and N sidecars pushing the same checkpoints would only race each
other; the others say so and exit at once. The sidecar shares the pod's
process namespace and leaves once the job's processes have ended, so the Job can complete on
every Kubernetes version (native sidecars need 1.29). Credentials never appear here: they come
from the Secret ``<project>-mirror`` (optional; created by the user).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import yaml

from cargohold.kinds import Backing, is_url
from cargohold.plan import LABEL_JOB, LABEL_PROJECT, Mount, Plan
from cargohold.render._limits import placement_terms
from cargohold.render._snapshots import snapshot_command

__all__ = [
    "DEFAULT_CAPACITY",
    "RDZV_PORT",
    "dns_name",
    "dump_kubernetes",
    "quantity",
    "render_kubernetes",
    "secret_name",
]

RDZV_PORT = 29500
DEFAULT_CAPACITY = 10 * 1024**3
_DNS_BAD = re.compile(r"[^a-z0-9-]+")
# A restore is staged beside its target and renamed into place, which cannot work on a mount
# point: the initContainer restores into this folder of the claim, the job mounts it (subPath).
RESTORED_SUBPATH = "content"
# How long a pod other than index 0 waits for index 0's restore, in seconds (editable in the
# rendered manifest: the environment variable of the initContainers).
RESTORE_WAIT = 6 * 3600
DATASET_RECORD = ".cargohold-restored"
DATASET_STARTED = ".cargohold-restoring"
MIRROR_RECORD = ".cargohold-mirror-restored"
_INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# Shell helpers of both restore scripts. `wait_for FILE WHAT [stale-ok]`: poll (2 s, bounded) until
# FILE holds "$want"; a FILE holding something else fails at once (its writer never rewrites it),
# unless stale-ok: the mirror's record of an earlier Job is rewritten by this Job's pod 0.
_SCRIPT_HELPERS = r"""set -u
say() { printf 'cargohold: %s\n' "$*"; }
fail() { printf 'cargohold: %s\n' "$*" >&2; exit 1; }
holds() { [ -f "$1" ] && [ "$(cat "$1" 2>/dev/null)" = "$want" ]; }
record() { printf '%s\n' "$want" > "$1.tmp" && mv -f "$1.tmp" "$1" || fail "cannot write $1"; }
wait_for() {
  waited=0
  until holds "$1"; do
    if [ -e "$1" ] && [ -z "${3:-}" ]; then
      fail "$1 records something else than this job's $2; see its content"
    fi
    if [ "$waited" -ge "${CARGOHOLD_RESTORE_WAIT:-@WAIT@}" ]; then
      fail "pod 0 did not finish the $2 within ${waited}s; see the log of pod 0's initContainers"
    fi
    sleep 2
    waited=$((waited + 2))
  done
  say "pod 0 finished the $2; starting"
}
""".replace("@WAIT@", str(RESTORE_WAIT))
# $1 the snapshot, $2 the claim's mount point; the repository comes in CARGOHOLD_REPO. Values are
# arguments, never part of the script.
_RESTORE_DATASET = (
    _SCRIPT_HELPERS
    + r"""snap=$1 claim=$2 content=$2/@CONTENT@
done_=$claim/@DONE@ started=$claim/@STARTED@
want=$(printf 'cargohold-restore 1\nrepository %s\nsnapshot %s' "$CARGOHOLD_REPO" "$snap")
if holds "$done_"; then say "$content already holds $snap; not restoring"; exit 0; fi
foreign="$claim holds another restore than $snap from $CARGOHOLD_REPO (see $done_ and $started)"
if [ -e "$done_" ]; then fail "$foreign; delete the claim or use a new one"; fi
if [ "${JOB_COMPLETION_INDEX:-0}" != 0 ]; then wait_for "$done_" "restore of $snap"; exit 0; fi
if [ -e "$started" ]; then
  holds "$started" || fail "$foreign; delete the claim or use a new one"
  say "finishing an interrupted restore of $snap"
elif [ -n "$(ls -A "$content" 2>/dev/null | grep -v '^\.cargohold-restore\.')" ]; then
  fail "$content holds data cargohold did not restore; not using it as $snap (delete the claim)"
else
  record "$started"
fi
cargohold restore "$snap" --to "$content" --force || exit $?
record "$done_"
say "restored $snap into $content"
""".replace("@CONTENT@", RESTORED_SUBPATH)
    .replace("@DONE@", DATASET_RECORD)
    .replace("@STARTED@", DATASET_STARTED)
)
# With several pods on one store, only index 0's sidecar pushes it.
_MIRROR_ON_INDEX_0 = """if [ "${JOB_COMPLETION_INDEX:-0}" != 0 ]; then
  echo "cargohold: pod 0 mirrors the shared checkpoint store; nothing to do here"
  exit 0
fi
exec cargohold mirror --until-pod-done
"""
# Index 0 restores the newest mirrored checkpoint and records it for this Job; the others wait.
_RESTORE_MIRROR = (
    _SCRIPT_HELPERS
    + r"""[ -n "${CARGOHOLD_JOB_UID:-}" ] || fail "the pod has no controller-uid label"
rec=$CARGOHOLD_CHECKPOINT_DIR/@RECORD@
want=$(printf 'cargohold-mirror-restore 1\njob %s' "$CARGOHOLD_JOB_UID")
if [ "${JOB_COMPLETION_INDEX:-0}" != 0 ]; then
  wait_for "$rec" "checkpoint restore" stale-ok
  exit 0
fi
cargohold mirror --restore-only || exit $?
record "$rec"
""".replace("@RECORD@", MIRROR_RECORD)
)
_RESTORE_ROOT = "/cargohold-restore"
# With several pods on one claim, only index 0's snapshot sidecar snapshots it; "$@" is its
# command, so the spec's values stay arguments.
_SNAPSHOTS_ON_INDEX_0 = """if [ "${JOB_COMPLETION_INDEX:-0}" != 0 ]; then
  echo "cargohold: pod 0 snapshots the shared store; nothing to do here"
  exit 0
fi
exec "$@"
"""


def dns_name(text: str, limit: int = 52) -> str:
    """A DNS-1123 label from ``text``: lower case, ``-`` for anything else, a short hash
    appended when it had to be cut (52 leaves room for an Indexed Job's pod suffix)."""
    name = _DNS_BAD.sub("-", text.lower()).strip("-") or "x"
    if len(name) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        name = name[: limit - 7].rstrip("-") + "-" + digest
    return name


def quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity: ``Gi``/``Mi``/``Ki`` when exact, else plain bytes."""
    for suffix, scale in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size and size % scale == 0:
            return f"{size // scale}{suffix}"
    return str(size)


def secret_name(plan: Plan) -> str:
    """The Secret whose keys (AWS_*, CARGOHOLD_S3_ENDPOINT) reach the cargohold containers."""
    return dns_name(f"{plan.project}-mirror")


def _claim_name(mount: Mount) -> str:
    return dns_name(mount.source or mount.store, 63)


def _needs_claim(mount: Mount) -> bool:
    return mount.backing is not Backing.TMPFS


def _claim(plan: Plan, mount: Mount) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany" if plan.nodes > 1 else "ReadWriteOnce"],
        "resources": {"requests": {"storage": quantity(mount.capacity or DEFAULT_CAPACITY)}},
    }
    if mount.storage_class:
        spec["storageClassName"] = mount.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": _claim_name(mount),
            "labels": {k: dns_name(v, 63) for k, v in mount.volume_labels(plan.project).items()},
        },
        "spec": spec,
    }


def _pod_volume(mount: Mount) -> dict[str, Any]:
    name = dns_name(mount.store, 63)
    if mount.backing is Backing.TMPFS:
        empty: dict[str, Any] = {}
        if mount.tmpfs_size is not None:
            empty["sizeLimit"] = quantity(mount.tmpfs_size)
        return {"name": name, "emptyDir": empty}
    return {"name": name, "persistentVolumeClaim": {"claimName": _claim_name(mount)}}


def _mount(mount: Mount, *, readonly: bool | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": dns_name(mount.store, 63), "mountPath": mount.target}
    if mount.snapshot is not None:
        entry["subPath"] = RESTORED_SUBPATH
    if mount.readonly if readonly is None else readonly:
        entry["readOnly"] = True
    return entry


def _labels(plan: Plan) -> dict[str, str]:
    return {LABEL_PROJECT: dns_name(plan.project, 63), LABEL_JOB: dns_name(plan.job, 63)}


def _secret_env(plan: Plan) -> list[dict[str, Any]]:
    return [{"secretRef": {"name": secret_name(plan), "optional": True}}]


def _index_env(plan: Plan) -> list[dict[str, Any]]:
    """What a restore initContainer needs to know which pod of several it is."""
    if plan.nodes <= 1:
        return []
    return [
        _field_env("JOB_COMPLETION_INDEX", _INDEX_ANNOTATION),
        {"name": "CARGOHOLD_RESTORE_WAIT", "value": str(RESTORE_WAIT)},
    ]


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _restore_dataset(plan: Plan, mount: Mount, image: str) -> dict[str, Any]:
    assert mount.snapshot is not None and mount.repository is not None
    root = f"{_RESTORE_ROOT}/{dns_name(mount.store, 63)}"
    return {
        "name": dns_name(f"restore-{mount.store}", 63),
        "image": image,
        "command": [
            "sh",
            "-c",
            _RESTORE_DATASET,
            "sh",
            mount.snapshot,
            root,
        ],
        "env": [{"name": "CARGOHOLD_REPO", "value": mount.repository}, *_index_env(plan)],
        "envFrom": _secret_env(plan),
        "volumeMounts": [{"name": dns_name(mount.store, 63), "mountPath": root}],
        "securityContext": {"allowPrivilegeEscalation": False},
    }


def _host_folder(
    mount: Mount,
    location: str | None,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    *,
    readonly: bool,
) -> None:
    """A repository or mirror that is a folder (a shared file system every node mounts at the
    same path, check_limits says so): a hostPath volume at that same path, so the URL in the
    containers' environment names it."""
    if location is None or is_url(location):
        return
    name = dns_name(f"repo-{mount.store}", 63)
    volumes.append({"name": name, "hostPath": {"path": location, "type": "Directory"}})
    for container in containers:
        entry: dict[str, Any] = {"name": name, "mountPath": location}
        if readonly:
            entry["readOnly"] = True
        container["volumeMounts"].append(entry)


def _mirror_containers(
    plan: Plan, mount: Mount, image: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    assert mount.mirror is not None
    env = [
        {"name": "CARGOHOLD_CHECKPOINT_DIR", "value": mount.target},
        {"name": "CARGOHOLD_MIRROR", "value": mount.mirror},
        {"name": "CARGOHOLD_PROJECT", "value": plan.project},
        {"name": "CARGOHOLD_JOB", "value": plan.job},
    ]
    restore: dict[str, Any] = {"name": "mirror-restore", "image": image}
    if plan.nodes > 1:  # only index 0 restores; the others wait for its record
        restore["command"] = ["sh", "-c", _RESTORE_MIRROR, "sh"]
        job_uid = _field_env("CARGOHOLD_JOB_UID", "metadata.labels['controller-uid']")
        restore["env"] = [*env, *_index_env(plan), job_uid]
    else:
        restore["args"] = ["cargohold", "mirror", "--restore-only"]
        restore["env"] = env
    restore["envFrom"] = _secret_env(plan)
    restore["volumeMounts"] = [_mount(mount, readonly=False)]
    restore["securityContext"] = {"allowPrivilegeEscalation": False}
    sidecar: dict[str, Any] = {"name": "mirror", "image": image}
    sidecar["env"] = [dict(e) for e in env]
    sidecar["envFrom"] = _secret_env(plan)
    if plan.nodes > 1:  # one shared store: pod 0's sidecar pushes it
        sidecar["env"].append(_index_env(plan)[0])
        sidecar["command"] = ["sh", "-c", _MIRROR_ON_INDEX_0, "sh"]
    else:
        sidecar["args"] = ["cargohold", "mirror", "--until-pod-done"]
    sidecar["volumeMounts"] = [_mount(mount, readonly=True)]
    sidecar["securityContext"] = {"allowPrivilegeEscalation": False}
    return restore, sidecar


def _snapshot_sidecar(plan: Plan, mount: Mount, image: str) -> dict[str, Any]:
    """The container that snapshots a scheduled claim until the job's processes have ended."""
    assert mount.snapshots is not None
    command = [*snapshot_command(mount, mount.snapshots), "--until-pod-done"]
    sidecar: dict[str, Any] = {"name": dns_name(f"snapshots-{mount.store}", 63), "image": image}
    env = [
        {"name": "CARGOHOLD_REPO", "value": mount.snapshots.repo},
        {"name": "CARGOHOLD_PROJECT", "value": plan.project},
        {"name": "CARGOHOLD_JOB", "value": plan.job},
    ]
    if plan.nodes > 1:  # one shared claim: pod 0's sidecar snapshots it
        env.append(_index_env(plan)[0])
        sidecar["command"] = ["sh", "-c", _SNAPSHOTS_ON_INDEX_0, "sh", *command]
    else:
        sidecar["args"] = command
    sidecar["env"] = env
    sidecar["envFrom"] = _secret_env(plan)
    sidecar["volumeMounts"] = [_mount(mount, readonly=True)]
    sidecar["securityContext"] = {"allowPrivilegeEscalation": False}
    return sidecar


def _env(plan: Plan, service: str | None) -> list[dict[str, Any]]:
    env = dict(plan.env)
    if service is not None:
        host = f"{dns_name(plan.container_name)}-0.{service}"
        env.setdefault("CARGOHOLD_NODES", str(plan.nodes))
        env.setdefault("MASTER_ADDR", host)
        env.setdefault("MASTER_PORT", str(RDZV_PORT))
        env.setdefault("CARGOHOLD_RDZV_ENDPOINT", f"{host}:{RDZV_PORT}")
    entries: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    entries += [
        {
            "name": name,
            "valueFrom": {
                "secretKeyRef": {"name": dns_name(f"{plan.project}-secrets"), "key": name}
            },
        }
        for name in plan.runtime.secrets
    ]
    return entries


def _resources(plan: Plan) -> dict[str, Any]:
    rt = plan.runtime
    limits: dict[str, str] = {}
    if rt.resources.cpus is not None:
        limits["cpu"] = f"{rt.resources.cpus:g}"
    if rt.resources.memory is not None:
        limits["memory"] = quantity(rt.resources.memory)
    if rt.gpus is not None and rt.gpus.count is not None and rt.gpus.count > 0:
        limits["nvidia.com/gpu"] = str(rt.gpus.count)
    return {"limits": limits} if limits else {}


def _container_security(plan: Plan) -> dict[str, Any]:
    rt = plan.runtime
    context: dict[str, Any] = {}
    if "no-new-privileges" in rt.security_opt:  # hardening (on by default)
        context["allowPrivilegeEscalation"] = False
    if rt.cap_drop:
        context["capabilities"] = {"drop": [c.upper().removeprefix("CAP_") for c in rt.cap_drop]}
    if rt.read_only:
        context["readOnlyRootFilesystem"] = True
    return context


def _affinity(plan: Plan) -> dict[str, Any] | None:
    expressions = []
    for constraint in plan.placement:
        terms = placement_terms(constraint)
        if terms is not None:  # the rest was refused by check_limits
            key, op, value = terms
            expressions.append({"key": key, "operator": op, "values": [value]})
    if not expressions:
        return None
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def _service(plan: Plan, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": _labels(plan)},
        "spec": {
            "clusterIP": "None",
            "selector": _labels(plan),
            "ports": [{"name": "rendezvous", "port": RDZV_PORT}],
            "publishNotReadyAddresses": True,
        },
    }


class _Dumper(yaml.SafeDumper):
    """Scripts (any text with a newline) as literal blocks, so the manifest reads as code."""


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _text)


def dump_kubernetes(objects: list[dict[str, Any]]) -> str:
    """``objects`` as a YAML stream, scripts as literal blocks (PyYAML falls back to a quoted
    string where a block cannot hold the text exactly)."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False)


def render_kubernetes(plan: Plan, *, image: str) -> list[dict[str, Any]]:
    """The Kubernetes objects for one job, claims first, the Job last.

    Args:
        plan: the job's plan; check it with ``check_limits(plan, "kubernetes")`` first.
        image: the cargohold image for initContainers and the mirror sidecar, as the cluster
            pulls it (e.g. ``registry.example.com/cargohold:1.0``).

    Returns:
        Dicts ready for ``yaml.safe_dump_all``.
    """
    name = dns_name(plan.container_name)
    objects: list[dict[str, Any]] = []
    seen: set[str] = set()
    for mount in plan.mounts:
        if _needs_claim(mount) and not mount.external and _claim_name(mount) not in seen:
            seen.add(_claim_name(mount))
            objects.append(_claim(plan, mount))
    service = None
    if plan.nodes > 1:
        service = name
        objects.append(_service(plan, service))

    container: dict[str, Any] = {"name": dns_name(plan.job, 63), "image": plan.image}
    if plan.runtime.entrypoint is not None:
        container["command"] = list(plan.runtime.entrypoint)
    if plan.command is not None:
        container["args"] = list(plan.command)  # like Docker's CMD: the image's entrypoint stays
    if plan.workdir is not None:
        container["workingDir"] = plan.workdir
    container["env"] = _env(plan, service)
    if plan.runtime.env_files:
        container["envFrom"] = [{"secretRef": {"name": dns_name(f"{plan.project}-env")}}]
    resources = _resources(plan)
    if resources:
        container["resources"] = resources
    mounts = [_mount(m) for m in plan.mounts]
    volumes = [_pod_volume(m) for m in plan.mounts]
    shm = plan.runtime.cluster_shm_size
    if shm is not None:  # also for ipc = "host", which a pod cannot have
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append(
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity(shm)}}
        )
    for index, folder in enumerate(plan.runtime.tmpfs):
        mounts.append({"name": f"tmpfs-{index}", "mountPath": folder})
        volumes.append({"name": f"tmpfs-{index}", "emptyDir": {"medium": "Memory"}})
    container["volumeMounts"] = mounts
    container["securityContext"] = _container_security(plan)

    init_containers = []
    for m in plan.mounts:
        if m.snapshot:
            init = _restore_dataset(plan, m, image)
            _host_folder(m, m.repository, [init], volumes, readonly=True)
            init_containers.append(init)
    containers = [container]
    ckpt = plan.checkpoint_mount
    share_pids = False
    if ckpt is not None and ckpt.mirror is not None:
        restore, sidecar = _mirror_containers(plan, ckpt, image)
        _host_folder(ckpt, ckpt.mirror, [restore, sidecar], volumes, readonly=False)
        init_containers.append(restore)
        containers.append(sidecar)
        share_pids = True
    for mount in plan.volumes():
        # A folder of this host cannot be reached from a pod: said by check_limits instead.
        if mount.snapshots is not None and not mount.snapshots.repo_is_folder:
            containers.append(_snapshot_sidecar(plan, mount, image))
            share_pids = True

    pod: dict[str, Any] = {"restartPolicy": "Never"}
    if plan.runtime.stop_timeout is not None:
        pod["terminationGracePeriodSeconds"] = plan.runtime.stop_timeout
    if service is not None:
        pod["subdomain"] = service
    if share_pids:
        pod["shareProcessNamespace"] = True
    pod["securityContext"] = {
        "runAsUser": plan.uid,
        "runAsGroup": plan.gid,
        "fsGroup": plan.gid,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    affinity = _affinity(plan)
    if affinity is not None:
        pod["affinity"] = affinity
    if init_containers:
        pod["initContainers"] = init_containers
    pod["containers"] = containers
    pod["volumes"] = volumes

    job_spec: dict[str, Any] = {"backoffLimit": plan.restart_max}
    if plan.nodes > 1:
        job_spec.update(completionMode="Indexed", completions=plan.nodes, parallelism=plan.nodes)
    job_spec["template"] = {"metadata": {"labels": _labels(plan)}, "spec": pod}
    objects.append(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": _labels(plan)},
            "spec": job_spec,
        }
    )
    return objects
