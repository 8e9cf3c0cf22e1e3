"""The commands themselves: thin wrappers that call the library and render its results."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from cargohold._atomic import write_text_atomic
from cargohold.cli._status import StatusLine
from cargohold.errors import UsageError

if TYPE_CHECKING:
    from cargohold.plan import Plan
    from cargohold.spec import Spec

# Heavy modules (pydantic, the Docker SDK, YAML) are imported inside the commands that use
# them: every command starts faster, and `cargohold snapshot` never loads the spec machinery.
SPEC_FILENAME = "cargohold.toml"

# markup=False, emoji=False: whatever is printed is printed as it is (a path may hold "[/]" or
# ":smile:"); styled output passes rich Text objects (or markup=True with escape()d user text).
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)

app = typer.Typer(
    name="cargohold",
    help="Persistent data for containerized machine learning: datasets, checkpoints and models "
    "that outlive their containers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
render_app = typer.Typer(
    help="Render a job as a docker run line or a compose file.", no_args_is_help=True
)
app.add_typer(render_app, name="render")

SpecOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help=f"The spec file (default: the nearest {SPEC_FILENAME}).",
        show_default=False,
    ),
]
JobArgument = Annotated[
    str | None,
    typer.Argument(help="The job (default: the only job, or 'train').", show_default=False),
]


def emit_json(data: object) -> None:
    """Plain JSON on stdout: rich's highlighter takes seconds on a 10,000-entry listing."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def _host_user() -> tuple[int, int]:
    return os.getuid(), os.getgid()


def _plan(file: Path | None, job: str | None) -> tuple[Spec, Plan]:
    from cargohold.plan import make_plan
    from cargohold.spec import load_spec

    spec = load_spec(file)
    return spec, make_plan(spec, job, host_user=_host_user())


def _say(message: str) -> None:
    err.print(f"[dim]cargohold:[/] {escape(message)}", markup=True, highlight=False)


@app.command()
def init(
    force: Annotated[bool, typer.Option(help="Overwrite an existing spec.")] = False,
) -> None:
    """Write a commented cargohold.toml for the current folder."""
    from cargohold.init_template import init_spec_text

    path = Path.cwd() / SPEC_FILENAME
    if path.exists() and not force:
        raise UsageError(
            f"{path} already exists.",
            hint="Edit it, or pass --force to replace it with the template.",
        )
    write_text_atomic(path, init_spec_text(Path.cwd().name))
    _say(f"wrote {path}; `cargohold plan` shows what it means")


@app.command()
def plan(
    job: JobArgument = None,
    file: SpecOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Also list what Swarm and Kubernetes renderings cannot express, for a job "
            "that has no cluster settings (nodes, placement, mirror).",
        ),
    ] = False,
) -> None:
    """Each store of a job (backing, source, target, mode) and its runtime settings, with why."""
    from cargohold.render._limits import TARGETS, limits_json, limits_of

    _, the_plan = _plan(file, job)
    if as_json:
        emit_json({**the_plan.to_json(), "limits": limits_json(the_plan)})
        return
    limits = {t: limits_of(the_plan, t) for t in TARGETS}
    # One block per store rather than a table: the reasons are sentences, and a table
    # squeezed into 80 columns (a pipe, CI logs) breaks them a word per line. User text is
    # escaped: a path with [brackets] is printed as it is.
    out.print(
        f"[bold]{escape(the_plan.project)} / {escape(the_plan.job)}[/]  image "
        f"{escape(the_plan.image)}, runs as {the_plan.user}",
        markup=True,
    )
    width = max((len(m.store) for m in the_plan.mounts), default=0)
    for m in the_plan.mounts:
        where = f"{m.source} -> {m.target}" if m.source else m.target
        out.print(
            f"  [bold]{escape(m.store):<{width}}[/]  {m.kind.value:<11} {m.backing.value:<6} "
            f"{escape(where)}  ({m.mode})",
            markup=True,
        )
        out.print(f"  {'':<{width}}  [dim]{escape(m.reason)}[/]", markup=True)
    if not the_plan.mounts:
        out.print("  (no stores: nothing this job writes will outlive its container)")
    if the_plan.runtime.reasons:
        out.print("[bold]runtime[/]", markup=True)
        for setting, reason in the_plan.runtime.reasons:
            out.print(f"  [bold]{setting:<12}[/] [dim]{escape(reason)}[/]", markup=True)
    # What each rendering target cannot express (render/_limits.py), said before rendering.
    # A job with no cluster settings gets the cluster targets' notes as one line (refusals are
    # always listed): a newcomer's first `plan` is about this host, and eight notes on Swarm
    # and Kubernetes filled half of the demo's screen.
    wants_cluster = (
        cluster
        or the_plan.nodes > 1
        or bool(the_plan.placement)
        or any(m.mirror for m in the_plan.mounts)
    )
    held_back: dict[str, int] = {}
    for target, found in limits.items():
        for limit in found:
            if target in ("swarm", "kubernetes") and not wants_cluster and not limit.fatal:
                held_back[target] = held_back.get(target, 0) + 1
                continue
            verdict = "[red]refused[/]" if limit.fatal else "[yellow]note[/]"
            out.print(
                f"  {verdict} {target}: {escape(limit.key)}: {escape(limit.message)}", markup=True
            )
    if held_back:
        counts = ", ".join(f"{t} {n} note{'s' if n > 1 else ''}" for t, n in held_back.items())
        out.print(
            f"  [dim]cluster renderings: {counts} (`cargohold plan --cluster` lists them)[/]",
            markup=True,
        )


@render_app.command("docker-run")
def render_docker_run_command(job: JobArgument = None, file: SpecOption = None) -> None:
    """The equivalent docker run line, shell-quoted (volume set-up included)."""
    from cargohold.render import render_docker_run
    from cargohold.render._limits import check_limits

    _, the_plan = _plan(file, job)
    notes = "".join(f"# {line}\n" for line in check_limits(the_plan, "docker-run"))
    sys.stdout.write(notes + render_docker_run(the_plan) + "\n")


@render_app.command("compose")
def render_compose_command(
    file: SpecOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """A docker-compose.yml (Compose Specification) running every job."""
    import yaml

    from cargohold.plan import make_plan
    from cargohold.render import render_compose
    from cargohold.spec import load_spec

    spec = load_spec(file)
    plans = [make_plan(spec, name, host_user=_host_user()) for name in spec.jobs]
    if not plans:
        raise UsageError("The spec declares no jobs to render.", hint="Add a [jobs.train] table.")
    folders = sorted(
        {m.source for p in plans for m in p.mounts if m.create_source and m.source}
        | {
            m.snapshots.repo
            for p in plans
            for m in p.volumes()
            if m.snapshots is not None and m.snapshots.repo_is_folder
        }
    )
    header = "# Generated by `cargohold render compose`; edit cargohold.toml instead.\n"
    from cargohold.render._limits import check_limits

    header += "".join(f"# {p.job}: {line}\n" for p in plans for line in check_limits(p, "compose"))
    if folders:
        header += "# Before `docker compose up`: mkdir -p " + " ".join(folders) + "\n"
    from cargohold import __version__

    # The mirror and snapshot services use the image `cargohold image` builds under this name.
    text = header + yaml.safe_dump(
        render_compose(plans, mirror_image=f"cargohold:{__version__}"), sort_keys=False
    )
    write_rendering(text, output, file)


def write_rendering(text: str, output: Path | None, spec_file: Path | None) -> None:
    """A rendered file to stdout, or to ``output`` whole (never a folder, never the spec).

    Raises:
        UsageError: ``output`` is empty, a folder, or the spec file itself.
    """
    if output is None:
        sys.stdout.write(text)
        return
    from cargohold.spec import SPEC_FILENAME

    if not str(output) or str(output).endswith("/") or output.is_dir():
        raise UsageError(f"-o {str(output)!r} is not a file name.", hint="Name a file: -o FILE.")
    same = spec_file is not None and output.resolve() == spec_file.resolve()
    if same or output.name == SPEC_FILENAME:
        raise UsageError(
            f"-o {output} would overwrite the spec.", hint="Write the rendering to another file."
        )
    write_text_atomic(output, text)
    _say(f"wrote {output}")


class _TrailingCommand(typer.core.TyperCommand):
    """A command whose words after ``--`` belong to someone else (the job): click's parser would
    mix them into the positional arguments, so they are set aside in ``ctx.meta`` first."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta[TRAILING_KEY] = args[cut + 1 :]
            args = args[:cut]
        return list(super().parse_args(ctx, args))


TRAILING_KEY = "cargohold.trailing_command"


@app.command(cls=_TrailingCommand)
def run(
    ctx: typer.Context,
    job: JobArgument = None,
    file: SpecOption = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Start and return.")] = False,
    resume: Annotated[
        str, typer.Option(help="auto: newest valid checkpoint; never; or a checkpoint path.")
    ] = "auto",
) -> int:
    """Run a job with its stores, stream its logs, restart and resume it. `-- CMD…` replaces
    the job's command."""
    from cargohold import jobs
    from cargohold.engine import connect

    spec, the_plan = _plan(file, job)
    trailing = ctx.meta.get(TRAILING_KEY)
    command = tuple(trailing) if trailing else None
    if command is not None:
        # The defaults that depend on the command (init for a shell, PyTorch's larger shm)
        # are decided for the command that runs, not for the one the spec names.
        from cargohold.plan import make_plan

        replaced = spec.jobs[the_plan.job].model_copy(update={"command": list(command)})
        spec = spec.model_copy(update={"jobs": {**spec.jobs, the_plan.job: replaced}})
        the_plan = make_plan(spec, the_plan.job, host_user=_host_user())
    how = jobs.Resume.parse(resume)
    engine = connect()
    for mount in the_plan.volumes():
        if mount.snapshots is not None:  # a setting is never dropped without a word
            by_hand = shlex.join(mount.snapshots.host_command(str(mount.source)))
            _say(
                f"note: {mount.source} is not snapshotted by `run`; `render compose` runs its "
                f"schedule, or run `{by_hand}` beside it"
            )

    status = StatusLine(err)
    say = status.first_clearing(_say)

    def on_log(stream: int, chunk: bytes) -> None:
        status.clear()
        target = sys.stdout.buffer if stream == 1 else sys.stderr.buffer
        target.write(chunk)
        target.flush()

    try:
        result = jobs.run_job(
            engine,
            the_plan,
            resume=how,
            command=command,
            detach=detach,
            say=say,
            on_log=on_log,
            progress=status.update if status.active else None,
        )
    finally:
        status.clear()
    if detach:
        out.print(result.container)
    elif result.exit_code != 0:
        _say(
            f"{result.container} exited with {result.exit_code} after {result.attempts} "
            f"attempt(s); its checkpoints are kept"
        )
    return result.exit_code


@app.command("base-image")
def base_image(
    rebuild: Annotated[bool, typer.Option(help="Build it again even if it exists.")] = False,
    log: Annotated[
        Path | None,
        typer.Option(
            help="Where a build writes its full log (default: ~/.cache/cargohold/base-image.log).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Make sure a Python base image exists, building one from Debian packages when no registry
    can be reached. On a terminal a status line shows the build; the full log goes to a file."""
    from cargohold import baseimage
    from cargohold.engine import connect

    engine = connect()
    if rebuild:
        engine.remove_image(baseimage.LOCAL_BASE)
    status = StatusLine(err)
    say = status.first_clearing(_say)
    try:
        name = baseimage.ensure_base_image(
            engine,
            on_output=say,
            on_progress=status.update if status.active else None,
            log_path=log,
        )
    finally:
        status.clear()
    out.print(name)


@app.command()
def version() -> None:
    """Print cargohold's version."""
    from cargohold import __version__

    out.print(__version__)
