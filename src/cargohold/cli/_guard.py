"""Commands that guard against loss: scan, rescue, rm, watch, doctor, ps."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from cargohold.cli._commands import SpecOption, app, emit_json, out
from cargohold.cli._data import JsonOption, _progress, _size
from cargohold.engine import connect
from cargohold.errors import CargoholdError

RescueTo = Annotated[
    str | None,
    typer.Option(
        "--to",
        help="A host folder, or volume:NAME (default: a per-container folder "
        "under ~/.local/share/cargohold/rescued).",
        show_default=False,
    ),
]


@app.command("scan")
def scan_command(
    containers: Annotated[
        list[str] | None, typer.Argument(help="Containers (default: all).")
    ] = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="Files shown per container.")] = 20,
) -> int:
    """Files in containers' writable layers that `docker rm` would delete, ML data first.
    Exit 1 when checkpoints, weights or datasets are at risk."""
    from cargohold.guard import scan_containers

    scans = scan_containers(connect(), containers or None)
    at_risk = any(s.worth_keeping for s in scans)
    if as_json:
        emit_json(
            [
                {
                    **asdict(s),
                    "worth_keeping": len(s.worth_keeping),
                    "bytes_at_risk": s.bytes_at_risk,
                }
                for s in scans
            ]
        )
        return 1 if at_risk else 0
    for scan in scans:
        if not scan.files:
            out.print(f"[green]{scan.container}[/] ({scan.status}): clean", markup=True)
            continue
        head = "[red]AT RISK[/]" if scan.worth_keeping else "[yellow]layer written[/]"
        out.print(
            f"{head} {scan.container} ({scan.status}): {len(scan.worth_keeping)} ML files, "
            f"{_size(scan.bytes_at_risk)} would be lost with the container",
            markup=True,
        )
        for item in scan.files[:limit]:
            out.print(
                f"  {item.category:<10} {_size(item.size):>9}  {item.path}  "
                f"[dim]({item.reason})[/]",
                markup=True,
                highlight=False,
            )
        if len(scan.files) > limit:
            out.print(f"  … and {len(scan.files) - limit} more (--limit)")
        if scan.worth_keeping:
            out.print(f"  save it: cargohold rescue {scan.container}")
    return 1 if at_risk else 0


@app.command("rescue")
def rescue_command(
    container: str,
    to: RescueTo = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every file of the layer, not only ML data.")
    ] = False,
) -> None:
    """Copy a container's at-risk files out, paths kept, checksums verified (works on stopped
    containers)."""
    from cargohold.guard import rescue_container

    with _progress(f"rescue {container}") as progress:
        result = rescue_container(
            connect(), container, to=to, everything=everything, progress=progress
        )
    if not result.files:
        out.print(
            f"{result.container}: nothing to rescue"
            + ("" if everything else " (--all takes every file of the layer)")
        )
        return
    out.print(
        f"rescued {result.files} files ({_size(result.bytes)}) from {result.container} "
        f"to {result.destination}, checksums verified"
    )


@app.command("rm")
def rm_command(
    container: str,
    force: Annotated[bool, typer.Option(help="Remove even with ML data inside.")] = False,
    rescue: Annotated[bool, typer.Option(help="Rescue the ML data first, then remove.")] = False,
    to: RescueTo = None,
) -> None:
    """Remove a container, refusing while its own layer holds unsaved ML data."""
    from cargohold.guard import remove_container

    scan, rescued = remove_container(connect(), container, force=force, rescue=rescue, to=to)
    if rescued is not None and rescued.files:
        out.print(f"rescued {rescued.files} files to {rescued.destination}")
    lost = (
        f" ({len(scan.worth_keeping)} ML files discarded)" if force and scan.worth_keeping else ""
    )
    out.print(f"removed {scan.container}{lost}")


@app.command("watch")
def watch_command(
    to: RescueTo = None,
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this long (default: until interrupted).")
    ] = None,
) -> None:
    """Follow the engine: when a container stops with ML data in its layer, rescue it before
    it can be removed. Cannot catch `--rm` containers (the engine deletes them as they stop)."""
    from cargohold.guard import watch

    engine = connect()
    out.print("watching for containers that stop with ML data in their layer (Ctrl-C stops)")
    for _ in watch(
        engine, on_event=lambda m: out.print(m, highlight=False), to=to, stop_after=seconds
    ):
        pass


def _check(rows: list[dict[str, str]], name: str, status: str, detail: str) -> None:
    rows.append({"check": name, "status": status, "detail": detail})


@app.command("doctor")
def doctor_command(file: SpecOption = None, as_json: JsonOption = False) -> int:
    """Engine, storage driver, free space, shm, uid mapping, and whether each store is
    writable by the job's user."""
    rows: list[dict[str, str]] = []
    engine = connect()
    info = engine.info()
    _check(
        rows,
        "engine",
        "ok",
        f"Docker {info.version} (API {info.api_version}), {info.operating_system}",
    )
    driver = info.storage_driver
    _check(
        rows,
        "storage driver",
        "ok" if driver in ("overlay2", "btrfs", "zfs") else "warn",
        driver
        + (
            ""
            if driver in ("overlay2", "btrfs", "zfs")
            else ": scans of writable layers go through the engine (slower)"
        ),
    )
    root = info.root_dir
    free = shutil.disk_usage(root).free if Path(root).exists() else None
    if info.userns_remap:
        _check(
            rows,
            "uid mapping",
            "warn",
            "userns-remap is on: uids in volumes differ from "
            "host uids; bind mounts need matching ownership",
        )
    elif info.rootless:
        _check(
            rows,
            "uid mapping",
            "warn",
            "rootless engine: volume files belong to your sub-uid range on the host",
        )
    else:
        _check(rows, "uid mapping", "ok", "none: container uids are host uids")
    plan = None
    try:
        import os

        from cargohold.plan import make_plan
        from cargohold.spec import load_spec

        spec = load_spec(file)
        plan = make_plan(spec, None, host_user=(os.getuid(), os.getgid()))
    except CargoholdError as exc:
        _check(rows, "spec", "warn" if file else "ok", f"no job checked ({exc.message})")
    shm = plan.shm_size if plan is not None and plan.shm_size else 64 << 20
    _check(
        rows,
        "shm",
        "ok" if shm >= 256 << 20 else "warn",
        f"/dev/shm of the job: {_size(shm)}"
        + ("" if shm >= 256 << 20 else ' (PyTorch DataLoader workers want more: shm_size = "1g")'),
    )
    if plan is not None:
        _doctor_stores(engine, plan, rows, free)
    elif free is not None:
        _check(rows, "free space", "ok", f"{_size(free)} free in {root}")
    worst = (
        "fail"
        if any(r["status"] == "fail" for r in rows)
        else "warn"
        if any(r["status"] == "warn" for r in rows)
        else "ok"
    )
    if as_json:
        emit_json(rows)
    else:
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        for r in rows:
            out.print(
                f"[{colour[r['status']]}]{r['status']:>4}[/]  {r['check']:<22} {r['detail']}",
                markup=True,
                highlight=False,
            )
    return 1 if worst == "fail" else 0


def _doctor_stores(engine: Any, plan: Any, rows: list[dict[str, str]], free: int | None) -> None:
    from cargohold.kinds import Backing
    from cargohold.volumes import open_volume

    checkpoints = plan.checkpoint_mount
    if checkpoints is not None and checkpoints.backing is Backing.VOLUME and free is not None:
        if engine.volume_exists(checkpoints.source):
            from cargohold.volumes import volume_usage

            sizes = volume_usage(open_volume(engine, checkpoints.source)).by_entry
            steps = [k for k in sizes if k.startswith("step-")]
            each = max(sizes[k] for k in steps) if steps else 0
            need = each * 4  # keep_last=3 plus the one being written
            status = "ok" if free > need else "fail"
            _check(
                rows,
                "free space",
                status,
                f"{_size(free)} free where volumes live; "
                f"checkpoints of {_size(each)} x (3 kept + 1 in flight) need {_size(need)}",
            )
        else:
            _check(
                rows,
                "free space",
                "ok",
                f"{_size(free)} free where volumes live (no checkpoints yet)",
            )
    image_ok = engine.image_exists(plan.image)
    for mount in plan.mounts:
        name = f"store {mount.store}"
        if mount.readonly:
            _check(
                rows,
                name,
                "ok",
                f"{mount.target} read-only, as a {mount.kind.value} should be"
                if mount.kind.value == "dataset"
                else f"{mount.target} read-only",
            )
            continue
        if mount.backing is Backing.TMPFS:
            _check(rows, name, "ok", f"{mount.target}: tmpfs, writable by anyone")
            continue
        if mount.backing is Backing.BIND:
            path = Path(mount.source)
            if not path.exists():
                _check(rows, name, "ok", f"{path} will be created for uid {plan.uid}")
            elif path.stat().st_uid in (plan.uid,) or plan.uid == 0:
                _check(rows, name, "ok", f"{path} writable by {plan.user}")
            else:
                _check(
                    rows,
                    name,
                    "fail",
                    f"{path} belongs to uid {path.stat().st_uid}; the "
                    f"job runs as {plan.user} and cannot write it (chown it, or set user)",
                )
            continue
        if not engine.volume_exists(mount.source):
            _check(
                rows, name, "ok", f"volume {mount.source} will be created and handed to {plan.user}"
            )
        elif not image_ok:
            _check(
                rows,
                name,
                "warn",
                f"volume {mount.source}: image {plan.image} not built "
                "yet, cannot test as the job's user",
            )
        else:
            code, _output = engine.run_helper(
                plan.image,
                [
                    "-c",
                    f"touch {mount.target}/.cargohold-doctor && rm -f "
                    f"{mount.target}/.cargohold-doctor",
                ],
                [mount.request()],
                user=plan.user,
                entrypoint=["sh"],
            )
            _check(
                rows,
                name,
                "ok" if code == 0 else "warn",
                f"volume {mount.source} writable by {plan.user}"
                if code == 0
                else f"volume {mount.source} not writable by {plan.user} (`cargohold run` hands "
                "fresh volumes over; this one has other owners)",
            )


@app.command("ps")
def ps_command(file: SpecOption = None, as_json: JsonOption = False) -> int:
    """The project's containers and volumes, their sizes, and the data at risk."""
    from cargohold.guard import scan_container
    from cargohold.inventory import volume_summaries
    from cargohold.plan import LABEL_PROJECT

    project = None
    try:
        from cargohold.spec import load_spec

        project = load_spec(file).project.name
    except CargoholdError:
        if file:
            raise
    engine = connect()
    label = f"{LABEL_PROJECT}={project}" if project else LABEL_PROJECT
    containers: list[dict[str, Any]] = []
    for container in engine.containers(label):
        scan = scan_container(engine, container.name)
        containers.append(
            {
                "name": container.name,
                "status": container.status,
                "image": container.image,
                "ml_files_at_risk": len(scan.worth_keeping),
                "bytes_at_risk": scan.bytes_at_risk,
            }
        )
    volumes = [
        asdict(v) for v in volume_summaries(engine, None) if project is None or v.project == project
    ]
    at_risk = any(c["ml_files_at_risk"] for c in containers)
    if as_json:
        emit_json({"project": project, "containers": containers, "volumes": volumes})
        return 1 if at_risk else 0
    out.print(f"[bold]{project or 'all cargohold projects'}[/]", markup=True)
    for c in containers:
        risk = (
            f"[red]{c['ml_files_at_risk']} ML files ({_size(c['bytes_at_risk'])}) at risk[/]"
            if c["ml_files_at_risk"]
            else "[green]nothing at risk[/]"
        )
        out.print(f"  container {c['name']:<28} {c['status']:<24} {risk}", markup=True)
    for v in volumes:
        snap = (
            "snapshot current"
            if v["snapshot_current"]
            else ("changed since last snapshot" if v["last_snapshot"] else "never snapshotted")
        )
        out.print(
            f"  volume    {v['name']:<28} {_size(v['bytes']):>9}  {v['kind'] or '-':<11} {snap}"
        )
    if not containers and not volumes:
        out.print("  no containers or volumes")
    return 1 if at_risk else 0
