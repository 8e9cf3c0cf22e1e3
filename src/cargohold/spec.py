"""The user's spec, ``cargohold.toml``: pydantic models, loading, validation, path resolution.

Validation happens in two layers. The pydantic models check each value on its own (types, allowed
kinds, absolute targets); ``Spec.check`` then checks what only the whole file can tell (two stores
on one target, a job naming a store that does not exist). Every failure becomes one ``SpecError``
that names the key and says how to fix it, because a pydantic traceback is not an answer an ML
engineer can act on.

File-system facts (does the dataset folder exist?) are checked by ``load_spec`` only, so that
``parse_spec`` stays pure and planning can be tested against golden files without a disk.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cargohold.errors import SpecError
from cargohold.kinds import Backing, StoreKind, parse_size

__all__ = [
    "SPEC_FILENAME",
    "Backing",
    "BuildSpec",
    "JobSpec",
    "ProjectSpec",
    "RestartSpec",
    "Spec",
    "StoreKind",
    "StoreSpec",
    "find_spec_file",
    "load_spec",
    "parse_size",
    "parse_spec",
]

SPEC_FILENAME = "cargohold.toml"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_USER_RE = re.compile(r"^\d+(:\d+)?$")
_PLACEMENT_RE = re.compile(r"^node\.[A-Za-z0-9_.-]+ ?(==|!=) ?[A-Za-z0-9_.\-/]+$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSpec(_Model):
    name: str

    @field_validator("name")
    @classmethod
    def _docker_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} cannot prefix Docker names; use lower-case letters, digits, '_', "
                "'.' and '-', starting with a letter or digit"
            )
        return value


class StoreSpec(_Model):
    kind: StoreKind
    target: str
    source: str | None = None
    backing: Backing | None = None
    readonly: bool | None = None
    volume: str | None = None
    driver: str | None = None
    driver_opts: dict[str, str] = Field(default_factory=dict)
    external: bool = False
    size: str | int | None = None
    # Clusters (issue 10): where a checkpoint store is mirrored, the PVC's class and size, and a
    # dataset restored from a snapshot repository instead of a local folder.
    mirror: str | None = None
    storage_class: str | None = None
    capacity: str | int | None = None
    repository: str | None = None
    snapshot: str | None = None

    @field_validator("target")
    @classmethod
    def _absolute_target(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute():
            raise ValueError(f"{value!r} is not an absolute path inside the container")
        if str(path) == "/":
            raise ValueError("a store cannot be mounted over the container's root '/'")
        return str(path)

    @field_validator("mirror", "repository")
    @classmethod
    def _no_secret_in_url(cls, value: str | None) -> str | None:
        # The spec is rendered into manifests and logs; credentials come from the environment.
        if value is not None and re.match(r"^[a-z][a-z0-9+.-]*://[^/]*@", value):
            raise ValueError(
                "the URL carries credentials; remove them and set AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY in the environment instead"
            )
        return value

    @field_validator("capacity")
    @classmethod
    def _valid_capacity(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("size")
    @classmethod
    def _valid_size(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("volume")
    @classmethod
    def _valid_volume(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", value):
            raise ValueError(f"{value!r} is not a valid Docker volume name")
        return value


class BuildSpec(_Model):
    context: str = "."
    dockerfile: str | None = None
    args: dict[str, str] = Field(default_factory=dict)


class RestartSpec(_Model):
    max: int = Field(default=0, ge=0, le=100)


class JobSpec(_Model):
    image: str
    build: BuildSpec | None = None
    command: list[str] | None = None
    stores: list[str] | None = None
    user: str = "host"
    shm_size: str | int | None = None
    restart: RestartSpec = Field(default_factory=RestartSpec)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    # Clusters (issue 10): pods/tasks working on one job, and where the scheduler may put them.
    nodes: int = Field(default=1, ge=1, le=1000)
    placement: list[str] = Field(default_factory=list)

    @field_validator("build", mode="before")
    @classmethod
    def _build_shorthand(cls, value: Any) -> Any:
        # `build = "."` is the common case; a table gives dockerfile and args.
        return {"context": value} if isinstance(value, str) else value

    @field_validator("command", mode="before")
    @classmethod
    def _command_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                'write the command as a list of arguments, e.g. ["python3", "train.py"], '
                "so that nothing depends on shell quoting"
            )
        return value

    @field_validator("user")
    @classmethod
    def _valid_user(cls, value: str) -> str:
        if value not in ("host", "root") and not _USER_RE.match(value):
            raise ValueError(f'{value!r} is not "host", "root" or a numeric "UID:GID"')
        return value

    @field_validator("placement")
    @classmethod
    def _valid_placement(cls, value: list[str]) -> list[str]:
        for constraint in value:
            if not _PLACEMENT_RE.match(constraint):
                raise ValueError(
                    f"{constraint!r} is not a placement constraint; write it like "
                    '"node.labels.gpu==true" or "node.hostname!=worker-3"'
                )
        return value

    @field_validator("shm_size")
    @classmethod
    def _valid_shm(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, value: Any) -> Any:
        # TOML gives numbers and booleans; the environment only holds text.
        if isinstance(value, dict):
            return {
                k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()
            }
        return value


class Spec(_Model):
    project: ProjectSpec
    stores: dict[str, StoreSpec] = Field(default_factory=dict)
    jobs: dict[str, JobSpec] = Field(default_factory=dict)
    # Where the file lives; relative paths resolve against it. Not part of the TOML.
    base_dir: Path = Path(".")

    def check(self) -> None:
        """Checks that span keys: names, overlapping targets, references between jobs and stores.

        Raises:
            SpecError: naming the first key at fault.
        """
        for name in self.stores:
            if not _NAME_RE.match(name):
                raise SpecError(
                    f"Store name {name!r} cannot be used in volume names.",
                    key=f"stores.{name}",
                    hint="Use lower-case letters, digits, '_', '.' and '-'.",
                )
        for name in self.jobs:
            if not _NAME_RE.match(name):
                raise SpecError(
                    f"Job name {name!r} cannot be used in container names.",
                    key=f"jobs.{name}",
                    hint="Use lower-case letters, digits, '_', '.' and '-'.",
                )
        for name, store in self.stores.items():
            _check_store(name, store)
        for job_name in self.jobs:
            selected = self.stores_of(job_name)
            unknown = [s for s in selected if s not in self.stores]
            if unknown:
                raise SpecError(
                    f"Job {job_name!r} uses store {unknown[0]!r}, which is not declared.",
                    key=f"jobs.{job_name}.stores",
                    hint=f"Declare [stores.{unknown[0]}] or use one of: "
                    f"{', '.join(self.stores) or '(no stores declared)'}.",
                )
            targets: dict[str, str] = {}
            for store_name in selected:
                target = self.stores[store_name].target
                if target in targets:
                    raise SpecError(
                        f"Stores {targets[target]!r} and {store_name!r} both mount at {target}.",
                        key=f"stores.{store_name}.target",
                        hint="Give each store its own target folder.",
                    )
                targets[target] = store_name
            for other, store_name in targets.items():
                for inner in targets:
                    if inner != other and inner.startswith(other.rstrip("/") + "/"):
                        raise SpecError(
                            f"Store {targets[inner]!r} at {inner} lies inside store "
                            f"{store_name!r} at {other}; the inner mount would hide part of the "
                            "outer one.",
                            key=f"stores.{targets[inner]}.target",
                            hint="Mount stores at folders that do not contain each other.",
                        )

    def stores_of(self, job: str) -> list[str]:
        """The store names a job mounts: its ``stores`` list, or every store."""
        selected = self.jobs[job].stores
        return list(self.stores) if selected is None else list(selected)

    def job_name(self, job: str | None) -> str:
        """Resolve an optional job name: the only job, or ``train``, when none is given.

        Raises:
            SpecError: the job is unknown, or several exist and none was named.
        """
        if job is not None:
            if job not in self.jobs:
                raise SpecError(
                    f"No job named {job!r} in {SPEC_FILENAME}.",
                    key=f"jobs.{job}",
                    hint=f"Jobs declared: {', '.join(self.jobs) or '(none)'}.",
                )
            return job
        if len(self.jobs) == 1:
            return next(iter(self.jobs))
        if "train" in self.jobs:
            return "train"
        raise SpecError(
            "Which job? The spec declares "
            + (f"several: {', '.join(self.jobs)}." if self.jobs else "none."),
            key="jobs",
            hint="Name the job on the command line, or add a [jobs.train] table.",
        )

    def host_path(self, value: str) -> Path:
        """Resolve a host path from the spec against the spec file's folder."""
        return (self.base_dir / Path(value).expanduser()).resolve()


def _check_store(name: str, store: StoreSpec) -> None:
    key = f"stores.{name}"
    if store.backing is Backing.BIND and store.source is None:
        raise SpecError(
            f"Store {name!r} is a bind mount but has no source folder.",
            key=f"{key}.source",
            hint='Add source = "./some/folder", or drop backing = "bind" to use a named volume.',
        )
    if store.backing in (Backing.VOLUME, Backing.TMPFS) and store.source is not None:
        raise SpecError(
            f"Store {name!r} has backing = {store.backing.value!r} and a host source; "
            "only a bind mount reads a host folder.",
            key=f"{key}.source",
            hint='Remove source, or set backing = "bind". To use an existing volume, '
            'write volume = "NAME".',
        )
    if store.volume is not None and store.source is not None:
        raise SpecError(
            f"Store {name!r} names both a host source and a volume.",
            key=f"{key}.volume",
            hint="Keep source for a bind mount, or volume for a named volume, not both.",
        )
    if _backing_guess(store) is Backing.TMPFS and store.source is not None:
        raise SpecError(
            f"Store {name!r} is a tmpfs and cannot have a source.",
            key=f"{key}.source",
            hint='Remove source, or set backing = "bind" if it must be a host folder.',
        )
    if store.size is not None and _backing_guess(store) is not Backing.TMPFS:
        raise SpecError(
            f"Store {name!r} sets size, which only a tmpfs store can honour.",
            key=f"{key}.size",
            hint='Remove size, or set backing = "tmpfs".',
        )
    if (store.driver or store.driver_opts) and _backing_guess(store) is not Backing.VOLUME:
        raise SpecError(
            f"Store {name!r} sets a volume driver but is not a named volume.",
            key=f"{key}.driver",
            hint='Remove driver/driver_opts, or set backing = "volume" and drop source.',
        )
    if store.mirror is not None and store.kind is not StoreKind.CHECKPOINTS:
        raise SpecError(
            f"Store {name!r} sets mirror, which only a checkpoints store has.",
            key=f"{key}.mirror",
            hint="Move mirror to the checkpoints store, or snapshot this store instead.",
        )
    if (store.snapshot is None) != (store.repository is None):
        raise SpecError(
            f"Store {name!r} sets only one of snapshot and repository.",
            key=f"{key}.{'repository' if store.repository is None else 'snapshot'}",
            hint='A dataset from a repository needs both: repository = "s3://bucket/repo", '
            'snapshot = "VOLUME@latest" (or an id or a tag).',
        )
    if store.snapshot is not None and (
        store.kind is not StoreKind.DATASET or _backing_guess(store) is not Backing.VOLUME
    ):
        raise SpecError(
            f"Store {name!r} restores a snapshot but is not a dataset in a named volume.",
            key=f"{key}.snapshot",
            hint="Only a dataset store without source can be filled from a repository.",
        )
    if (store.storage_class or store.capacity is not None) and _backing_guess(
        store
    ) is Backing.TMPFS:
        raise SpecError(
            f"Store {name!r} is a tmpfs; storage_class and capacity describe a persistent volume.",
            key=f"{key}.storage_class" if store.storage_class else f"{key}.capacity",
            hint="Remove them, or use size for a tmpfs.",
        )
    if store.kind is StoreKind.CHECKPOINTS and _backing_guess(store) is Backing.TMPFS:
        raise SpecError(
            f"Checkpoint store {name!r} is a tmpfs: every checkpoint would die with the container.",
            key=f"{key}.backing",
            hint='Use backing = "volume" (the default) or a bind source.',
        )


def _backing_guess(store: StoreSpec) -> Backing:
    """The backing a store gets; the reasons live in plan.py, this is only the choice."""
    if store.backing is not None:
        return store.backing
    if store.kind is StoreKind.SCRATCH:
        return Backing.TMPFS
    if store.source is not None:
        return Backing.BIND
    if store.kind is StoreKind.ARTIFACTS:
        return Backing.BIND  # an artifacts store without source is refused by the planner
    return Backing.VOLUME


def _error_from_validation(exc: ValidationError) -> SpecError:
    """One paragraph for the first problem pydantic found, naming its key."""
    errors = exc.errors()
    # A misspelt key also makes the intended one "missing": name the misspelling first.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "missing":
        return SpecError(
            f"{SPEC_FILENAME}: {key} is required but missing.",
            key=key,
            hint=_missing_hint(loc),
        )
    if kind == "extra_forbidden":
        return SpecError(
            f"{SPEC_FILENAME}: unknown key {key}.",
            key=key,
            hint="Check its spelling against `cargohold init`'s commented template.",
        )
    if kind == "enum":
        allowed = err.get("ctx", {}).get("expected", "")
        return SpecError(
            f"{SPEC_FILENAME}: {key} = {err['input']!r} is not one of {allowed}.",
            key=key,
            hint="Pick one of the listed values.",
        )
    message = str(err["msg"]).removeprefix("Value error, ")
    return SpecError(
        f"{SPEC_FILENAME}: {key}: {message}.".replace("..", "."),
        key=key,
        hint="Fix that value; `cargohold init` writes a commented example.",
    )


def _missing_hint(loc: list[str]) -> str:
    field = loc[-1]
    examples = {
        "name": '[project]\nname = "my-project"',
        "kind": 'kind = "dataset"   # or checkpoints, artifacts, cache, scratch',
        "target": 'target = "/data"   # where the store appears inside the container',
        "image": 'image = "my-image"',
        "project": '[project]\nname = "my-project"',
    }
    if field in examples:
        return "Add it, for example:\n" + examples[field]
    return f"Add {field} to the table."


def parse_spec(text: str, *, base_dir: Path, source: str = SPEC_FILENAME) -> Spec:
    """Parse and validate spec text without touching the file system.

    Args:
        text: the TOML document.
        base_dir: the folder relative paths resolve against.
        source: a name for the text in error messages.

    Returns:
        The validated spec.

    Raises:
        SpecError: malformed TOML or an invalid spec.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(
            f"{source} is not valid TOML: {exc}.",
            hint="Fix the syntax at that line; strings need quotes, tables need [brackets].",
        ) from None
    if "base_dir" in data:
        raise SpecError(
            f"{source}: unknown key base_dir.",
            key="base_dir",
            hint="Relative paths already resolve against the spec file's folder.",
        )
    try:
        spec = Spec.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise _error_from_validation(exc) from None
    spec.check()
    return spec


def find_spec_file(start: Path | None = None) -> Path:
    """The nearest ``cargohold.toml`` in ``start`` or its parents.

    Raises:
        SpecError: none was found.
    """
    here = (start or Path.cwd()).resolve()
    if here.is_file():
        return here
    for folder in (here, *here.parents):
        candidate = folder / SPEC_FILENAME
        if candidate.is_file():
            return candidate
    raise SpecError(
        f"No {SPEC_FILENAME} in {here} or any folder above it.",
        hint="Run `cargohold init` to write one, or pass --file PATH.",
    )


def load_spec(path: Path | None = None) -> Spec:
    """Read, validate and check a spec file, including the host paths it names.

    Raises:
        SpecError: the file is missing, malformed or inconsistent, or a dataset folder is absent.
    """
    file = find_spec_file(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"Cannot read {file}: {exc}.", hint="Check the file's permissions."
        ) from None
    spec = parse_spec(text, base_dir=file.parent, source=str(file))
    check_host_paths(spec)
    return spec


def check_host_paths(spec: Spec) -> None:
    """A bind source that does not exist is created by Docker as an empty, root-owned folder,
    which hides the mistake until training reads nothing. Refuse it here (artifacts excepted:
    the runner creates those, owned by the job's user).

    Raises:
        SpecError: naming the store whose source is missing.
    """
    for name, store in spec.stores.items():
        if store.source is None or store.kind is StoreKind.ARTIFACTS:
            continue
        path = spec.host_path(store.source)
        if not path.exists():
            raise SpecError(
                f"Store {name!r}: source {path} does not exist. Docker would create it as an "
                "empty folder owned by root and the job would see no data.",
                key=f"stores.{name}.source",
                hint=f"Create or download the data into {path}, or correct the path "
                f"(relative paths start at {spec.base_dir}).",
            )
