"""What each rendering target cannot express, said once, for the renderers and for ``plan``.

A spec setting is never dropped silently: for each target a setting is either rendered, or stated
here as a ``Limit``. A fatal limit stops the rendering with a ``SpecError`` (exit 2) naming the key;
a non-fatal one becomes a comment at the top of the rendered file and a line in ``plan``. One
small registered function per setting (STYLE 15), so the list of limits is the list of functions.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cargohold.errors import SpecError
from cargohold.kinds import Backing, is_url
from cargohold.plan import Plan

__all__ = [
    "TARGETS",
    "Limit",
    "check_limits",
    "limits_json",
    "limits_of",
    "placement_terms",
]

TARGETS = ("docker-run", "compose", "swarm", "kubernetes")
_ONE_HOST = ("docker-run", "compose")

# Swarm constraint field → Kubernetes well-known node label.
_K8S_NODE_KEYS = {
    "node.hostname": "kubernetes.io/hostname",
    "node.platform.os": "kubernetes.io/os",
    "node.platform.arch": "kubernetes.io/arch",
}


@dataclass(frozen=True)
class Limit:
    """One spec setting a target renders differently or not at all."""

    key: str
    message: str
    fatal: bool = False


_Rule = Callable[[Plan, str], Iterator[Limit]]
_RULES: list[_Rule] = []


def _rule(func: _Rule) -> _Rule:
    _RULES.append(func)
    return func


def placement_terms(constraint: str) -> tuple[str, str, str] | None:
    """A Swarm constraint as (Kubernetes node label, In|NotIn, value), or None when Kubernetes
    has no label for it."""
    for op, k8s_op in (("==", "In"), ("!=", "NotIn")):
        if op in constraint:
            field, _, value = (part.strip() for part in constraint.partition(op))
            if field.startswith("node.labels."):
                return field.removeprefix("node.labels."), k8s_op, value
            if field in _K8S_NODE_KEYS:
                return _K8S_NODE_KEYS[field], k8s_op, value
    return None


@_rule
def _nodes(plan: Plan, target: str) -> Iterator[Limit]:
    if plan.nodes > 1 and target != "kubernetes":
        yield Limit(
            f"jobs.{plan.job}.nodes",
            f"nodes = {plan.nodes}: {target} cannot start one job on several nodes with a rank "
            "and a rendezvous address each; `cargohold render kubernetes` can (Indexed Job).",
            fatal=True,
        )


@_rule
def _placement(plan: Plan, target: str) -> Iterator[Limit]:
    key = f"jobs.{plan.job}.placement"
    if not plan.placement:
        return
    if target in _ONE_HOST:
        yield Limit(
            key, f"placement {list(plan.placement)} is ignored: {target} runs on this host."
        )
    elif target == "kubernetes":
        for constraint in plan.placement:
            if placement_terms(constraint) is None:
                yield Limit(
                    key,
                    f"placement {constraint!r} has no Kubernetes node label; use "
                    "node.labels.KEY==VALUE, node.hostname, node.platform.os or .arch.",
                    fatal=True,
                )


@_rule
def _build(plan: Plan, target: str) -> Iterator[Limit]:
    if plan.build is not None and target in ("swarm", "kubernetes"):
        yield Limit(
            f"jobs.{plan.job}.build",
            f"build is not rendered: a cluster pulls {plan.image} from a registry; build and push "
            "it first (docker build -t REGISTRY/NAME . && docker push REGISTRY/NAME).",
        )


@_rule
def _binds(plan: Plan, target: str) -> Iterator[Limit]:
    for m in plan.mounts:
        if m.backing is not Backing.BIND:
            continue
        if target == "kubernetes":
            yield Limit(
                f"stores.{m.store}.source",
                f"host folder {m.source} does not follow the job to a cluster node: store "
                f"{m.store!r} becomes a PersistentVolumeClaim; fill it with `cargohold restore "
                "SNAP --to DIR` or set repository/snapshot.",
            )
        elif target == "swarm":
            yield Limit(
                f"stores.{m.store}.source",
                f"bind {m.source} must exist on every node a task may land on.",
            )


@_rule
def _drivers(plan: Plan, target: str) -> Iterator[Limit]:
    for m in plan.mounts:
        if m.driver and target == "kubernetes":
            yield Limit(
                f"stores.{m.store}.driver",
                f"volume driver {m.driver!r} is Docker's; on Kubernetes the claim's storage class "
                "decides (set storage_class).",
            )


@_rule
def _storage_class(plan: Plan, target: str) -> Iterator[Limit]:
    if target == "kubernetes":
        for m in plan.mounts:
            if m.external and (m.storage_class or m.capacity is not None):
                yield Limit(
                    f"stores.{m.store}.storage_class",
                    f"store {m.store!r} is external: its claim exists already and is not "
                    "rendered, so storage_class and capacity are not applied.",
                )
        return
    for m in plan.mounts:
        if m.storage_class or m.capacity is not None:
            yield Limit(
                f"stores.{m.store}.storage_class",
                "storage_class and capacity apply to Kubernetes claims only.",
            )


@_rule
def _snapshot_datasets(plan: Plan, target: str) -> Iterator[Limit]:
    for m in plan.mounts:
        if m.snapshot is None:
            continue
        if target == "kubernetes":
            continue
        yield Limit(
            f"stores.{m.store}.snapshot",
            f"{target} has no init containers to restore {m.snapshot} from {m.repository}; "
            f"restore it into volume {m.source} first: "
            f"`CARGOHOLD_REPO={shlex.quote(m.repository or '')} "
            f"{shlex.join(['cargohold', 'restore', m.snapshot, m.source or m.store])}` on the "
            "node that runs it.",
        )


@_rule
def _seeds(plan: Plan, target: str) -> Iterator[Limit]:
    """A volume seeded once from a host folder: the copy is a helper run on this host (run,
    the docker run line, Compose's prepare service); a cluster's node has no such folder."""
    if target not in ("kubernetes", "swarm"):
        return
    for m in plan.mounts:
        if m.seed is None:
            continue
        where = "claim" if target == "kubernetes" else "volume"
        yield Limit(
            f"stores.{m.store}.source",
            f"the {where} {m.source} is not seeded from {m.seed} on a cluster (the folder is on "
            f"this host): fill it before the job starts, e.g. "
            f"`{shlex.join(['cargohold', 'snapshot', m.seed])}` here and repository/snapshot "
            "on the store, or `cargohold ingest` on the node.",
        )


@_rule
def _kubernetes_names(plan: Plan, target: str) -> Iterator[Limit]:
    """Kubernetes names are DNS labels: ``data_a`` and ``data-a`` become one name, and the API
    server would refuse the pod, or two folders would share one claim (kubernetes-validate
    sees neither)."""
    if target != "kubernetes":
        return
    from cargohold.render.kubernetes import dns_name

    pod_volumes = [(m.store, m.store) for m in plan.mounts]
    # A claim per volume or bind source (a bind's folder becomes a claim too); stores sharing
    # one source share its claim on purpose.
    claims = list(
        {
            (m.source or m.store): m.store for m in plan.mounts if m.backing is not Backing.TMPFS
        }.items()
    )
    for what, named in (("pod volume", pod_volumes), ("claim", claims)):
        first: dict[str, str] = {}
        for original, store in named:
            name = dns_name(original, 63)
            if name in first and first[name] != original:
                yield Limit(
                    f"stores.{store}",
                    f"{original!r} and {first[name]!r} are both the Kubernetes {what} {name!r}; "
                    "rename one (Kubernetes names are lower case, digits and '-').",
                    fatal=True,
                )
            first.setdefault(name, original)


@_rule
def _host_folders(plan: Plan, target: str) -> Iterator[Limit]:
    """A mirror or a dataset repository that is a folder of this host: a cluster's pods and
    tasks run on other machines, so the folder must be a shared file system mounted at the same
    path on every node (it is mounted from the node: hostPath, a Swarm bind)."""
    if target not in ("kubernetes", "swarm"):
        return
    for m in plan.mounts:
        for key, location in (("mirror", m.mirror), ("repository", m.repository)):
            if location is None or is_url(location):
                continue
            if key == "repository" and target == "swarm":
                continue  # Swarm does not restore datasets (said by _snapshot_datasets)
            how = "a hostPath volume" if target == "kubernetes" else "a bind mount"
            yield Limit(
                f"stores.{m.store}.{key}",
                f"{key} {location} is a folder: it is mounted from the node ({how}), so it "
                "must exist on every node that may run the job (a shared file system mounted "
                "at the same path); an object store (s3://bucket/prefix) needs nothing there.",
            )


@_rule
def _mirror(plan: Plan, target: str) -> Iterator[Limit]:
    ckpt = plan.checkpoint_mount
    if ckpt is None or ckpt.mirror is None:
        return
    if target == "swarm" and plan.command is None:
        yield Limit(
            f"jobs.{plan.job}.command",
            "the mirror runs in the job's container on Swarm and must know the job's command; "
            "set command.",
            fatal=True,
        )
    elif target == "swarm":
        yield Limit(
            f"stores.{ckpt.store}.mirror",
            "Swarm has no pods, so no sidecar can share the task's volume: the mirror runs in the "
            "job's own container (`cargohold mirror --exec -- CMD`), and the job's image needs "
            "cargohold (build it FROM the image `cargohold image` makes).",
        )
    elif target == "docker-run":
        yield Limit(
            f"stores.{ckpt.store}.mirror",
            f"mirror {ckpt.mirror} is not part of this line; `cargohold run` runs the mirror "
            "beside the job, or run `cargohold mirror` yourself.",
        )
    elif target == "compose":
        yield Limit(
            f"stores.{ckpt.store}.mirror",
            f"{plan.job}-mirror pushes checkpoints to {ckpt.mirror} until `docker compose down`; "
            "it needs the image `cargohold image` builds, and an S3 server on this machine's "
            "loopback is not reachable from Compose's network.",
        )


@_rule
def _snapshot_schedules(plan: Plan, target: str) -> Iterator[Limit]:
    for m in plan.volumes():
        schedule = m.snapshots
        if schedule is None:
            continue
        key = f"stores.{m.store}.snapshots"
        by_hand = shlex.join(schedule.host_command(m.source or m.store))
        if target == "compose":
            yield Limit(
                key,
                f"a sidecar (<job>-snapshots-{m.store}, beside the first job that mounts it) "
                f"snapshots volume {m.source} {schedule.describe()} until `docker compose "
                "down`; it needs the image `cargohold image` builds"
                + (
                    f", and the folder {schedule.repo} writable by {plan.user}."
                    if schedule.repo_is_folder
                    else "."
                ),
            )
        elif target == "docker-run":
            yield Limit(key, f"the line takes no snapshots; run `{by_hand}` on this host.")
        elif target == "swarm":
            yield Limit(
                key,
                "Swarm has no pods, so no sidecar can share the task's volume on whichever node "
                f"it lands: not rendered; run `{by_hand}` on that node.",
            )
        elif schedule.repo_is_folder:  # kubernetes
            yield Limit(
                f"{key}.repo",
                f"a pod cannot reach the folder {schedule.repo} of this host: no snapshot "
                "sidecar is rendered; use an s3:// repository for a cluster.",
            )


@_rule
def _shm(plan: Plan, target: str) -> Iterator[Limit]:
    if plan.shm_size is not None and target == "swarm":
        yield Limit(
            f"jobs.{plan.job}.shm_size",
            "Swarm services have no shm_size (moby#26714): /dev/shm is a tmpfs mount instead.",
        )


@_rule
def _checkpoint_owner(plan: Plan, target: str) -> Iterator[Limit]:
    if target == "swarm" and plan.uid != 0 and any(not m.readonly for m in plan.volumes()):
        yield Limit(
            f"jobs.{plan.job}.user",
            f"Swarm cannot run a preparing container first: a fresh volume is owned by root "
            f"unless the image's folder at its target is owned by {plan.user} (Docker copies "
            "the image's folder into an empty volume).",
        )


@_rule
def _gpus(plan: Plan, target: str) -> Iterator[Limit]:
    gpus = plan.runtime.gpus
    if gpus is None or target in _ONE_HOST:
        return
    if gpus.device_ids or gpus.all:
        yield Limit(
            f"jobs.{plan.job}.gpus",
            f"gpus = {gpus.describe()}: {target} schedules GPUs by count, not "
            + ("by device id." if gpus.device_ids else "as 'all' of a node."),
            fatal=True,
        )
    elif target == "swarm":
        yield Limit(
            f"jobs.{plan.job}.gpus",
            f"{gpus.count} GPU(s) as the generic resource NVIDIA-GPU: each node must advertise "
            'its GPUs ("node-generic-resources" in daemon.json) and run the NVIDIA runtime.',
        )


# Runtime settings a target has no field for: (target, setting) → what happens instead.
_UNSUPPORTED: dict[tuple[str, str], str] = {
    ("kubernetes", "ipc"): "a pod shares IPC between its containers; /dev/shm is a memory "
    "emptyDir sized by shm_size (1 GiB for a GPU or PyTorch job)",
    ("kubernetes", "ulimits"): "Kubernetes has no per-pod ulimits; the node's container "
    "runtime defaults apply (set them there, e.g. memlock for NCCL)",
    ("kubernetes", "init"): "Kubernetes has no init flag; the pause process reaps zombies "
    "(shareProcessNamespace), or put tini in the image",
    ("kubernetes", "security_opt"): "only no-new-privileges is expressible "
    "(allowPrivilegeEscalation: false)",
    ("kubernetes", "pids_limit"): "pid limits are the kubelet's (podPidsLimit)",
    ("kubernetes", "devices"): "host devices reach pods through a device plugin's resource",
    ("kubernetes", "network"): "pods get the cluster network; hostNetwork (the node's own) is "
    "left out: it hands the pod the node's ports and most clusters' policies refuse it",
    ("swarm", "ipc"): "Swarm services have no ipc; /dev/shm is a tmpfs mount (1 GiB for a GPU "
    "or PyTorch job)",
    ("swarm", "ulimits"): "rendered, but docker stack deploy honours service ulimits only "
    "from Docker 23 (API 1.42) on",
    ("swarm", "security_opt"): "docker stack deploy ignores security_opt",
    ("swarm", "pids_limit"): "a stack takes a pids limit only from Docker 23 (API 1.42) on",
    ("swarm", "devices"): "Swarm services cannot map host devices",
}


@_rule
def _runtime(plan: Plan, target: str) -> Iterator[Limit]:
    rt = plan.runtime
    used = {
        "ipc": rt.ipc is not None and rt.ipc != "private",
        "ulimits": bool(rt.ulimits),
        "init": rt.init,
        "security_opt": any(o != "no-new-privileges" for o in rt.security_opt)
        or (target == "swarm" and bool(rt.security_opt)),
        "pids_limit": rt.resources.pids_limit is not None,
        "devices": bool(rt.devices),
        "network": rt.network is not None,
    }
    for setting, present in used.items():
        why = _UNSUPPORTED.get((target, setting))
        if present and why:
            key = "resources.pids_limit" if setting == "pids_limit" else setting
            said = why if why.startswith("rendered") else f"not rendered: {why}"
            yield Limit(f"jobs.{plan.job}.{key}", f"{said}.")
    if target == "swarm":
        templated = sorted(k for k, v in plan.env if "{{" in v)
        if templated:
            yield Limit(
                f"jobs.{plan.job}.env",
                f"{', '.join(templated)}: Swarm reads {{{{…}}}} in environment values as a "
                "template ({{.Node.Hostname}}) and replaces it; the value the job sees differs.",
            )
    if target == "swarm" and rt.network not in (None, "host"):
        yield Limit(
            f"jobs.{plan.job}.network",
            f"network {rt.network!r} is not rendered: a stack's services share its overlay "
            'network (network = "host" is rendered).',
        )
    if target == "kubernetes" and rt.env_files:
        yield Limit(
            f"jobs.{plan.job}.env_file",
            "a cluster cannot read files on this host: the manifest takes them from the Secret "
            f"{plan.project}-env (kubectl create secret generic … --from-env-file=FILE).",
        )
    if target == "kubernetes" and rt.secrets:
        yield Limit(
            f"jobs.{plan.job}.secrets",
            f"{', '.join(rt.secrets)} come from the Secret {plan.project}-secrets, one key each.",
        )


def limits_of(plan: Plan, target: str) -> list[Limit]:
    """Every limit of ``target`` for this plan, fatal ones included."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}")
    return [limit for rule in _RULES for limit in rule(plan, target)]


def limits_json(plan: Plan) -> dict[str, list[dict[str, object]]]:
    """Every target's limits for ``plan --json``: key, message and whether it is fatal."""
    return {
        target: [
            {"key": x.key, "message": x.message, "fatal": x.fatal} for x in limits_of(plan, target)
        ]
        for target in TARGETS
    }


def check_limits(plan: Plan, target: str) -> list[str]:
    """The comment lines a rendering must carry.

    Raises:
        SpecError: the plan uses something the target cannot do; names the key.
    """
    found = limits_of(plan, target)
    fatal = next((limit for limit in found if limit.fatal), None)
    if fatal is not None:
        raise SpecError(
            f"render {target}: {fatal.message}",
            key=fatal.key,
            hint=f"Remove {fatal.key} for this target, or render for another one.",
        )
    return [f"{limit.key}: {limit.message}" for limit in found]
