"""The rules, one registered function each. Every rule decides from evidence and says which.

Errors are reserved for data that is certainly lost or a host that is certainly exposed;
when the evidence is not there (an unknown image, a relative path with no known working
directory, a placeholder path), a rule stays silent rather than guess.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from cargohold.lint._evidence import (
    OUTPUT_PARTS,
    PathUse,
    image_facts,
    looks_placeholder,
    mount_for,
    notebook_dir,
    path_uses,
    relative_unknown,
    run_user,
    workdir,
    workload,
    workload_words,
)
from cargohold.lint._images import repository
from cargohold.lint._model import Mount, Service, Text
from cargohold.lint._registry import Hit, rule

__all__: list[str] = []

_SOCKET = re.compile(r"(^|/)(docker|podman|containerd)\.sock$")
_FILE_EXT = re.compile(
    r"\.(conf|cfg|ini|ya?ml|json|toml|env|txt|py|sh|pem|crt|key|cert|xml|properties|js|lua|"
    r"sql|htpasswd|sqlite3?|db|lock|rules|j2|tmpl|template|csv|pub|p12|jks|pbtxt|prototxt|"
    r"cnf|service|html|rb|pl|php|ts|ipynb|pkl|pt|pth|ckpt|bin|safetensors|onnx)$",
    re.IGNORECASE,
)
_DOTFILES = {".env", ".htpasswd", ".bashrc", ".gitconfig", ".netrc", ".npmrc", ".pypirc"}
_DATASET_PARTS = {
    "dataset",
    "datasets",
    "corpus",
    "corpora",
    "coco",
    "imagenet",
    "cifar",
    "cifar10",
    "cifar100",
    "mnist",
    "voc",
    "cityscapes",
    "kitti",
    "librispeech",
    "laion",
    "wikitext",
    "openwebtext",
    "common_voice",
    "commonvoice",
    "ade20k",
    "lvis",
    "objects365",
    "nuscenes",
    "waymo",
    "squad",
    "glue",
    "train_data",
    "training_data",
    "training-data",
    "train-data",
}
_DATA_SPLITS = {"train", "val", "valid", "validation", "test", "raw", "images", "labels"}
# Folders a job writes into: a mount named so is not a read-only dataset.
_WRITTEN_PARTS = OUTPUT_PARTS | {
    "models", "model", "cache", ".cache", "logs", "log", "runs", "weights", "artifacts",
    "mlruns", "experiments", "out", "tmp", "scratch", "exports", "processed", "features",
    "embeddings", "index", "predictions",
}  # fmt: skip


def _parts(path: str) -> set[str]:
    return {p.lower() for p in re.split(r"[/]", path) if p}


def _name_parts(path: str) -> set[str]:
    """Path parts and the words inside them (``coco-2017`` → ``coco``, ``2017``)."""
    words = set()
    for part in _parts(path):
        words.add(part)
        words |= set(re.split(r"[_.\-]", part))
    return words


def _placeholder_mount(mount: Mount) -> bool:
    """``/path/to/your/data:/data``: an example someone is meant to fill in, not a mount."""
    return looks_placeholder(str(mount.target)) or (
        mount.source is not None and looks_placeholder(str(mount.source))
    )


def _kept(mount: Mount | None) -> bool:
    return mount is not None and mount.kind != "tmpfs"


def _outputs(service: Service, use: str) -> Iterator[PathUse]:
    seen: set[PurePosixPath] = set()
    for found in path_uses(service):
        if found.use == use and found.path is not None and found.path not in seen:
            seen.add(found.path)
            yield found


def _relative_note(found: PathUse, service: Service) -> tuple[str, ...]:
    if str(found.value).startswith("/"):
        return (found.evidence,)
    base, source = workdir(service)
    return (found.evidence, f"relative to the working directory {base} ({source})")


@rule(
    "CH001",
    "output-not-on-mount",
    "error",
    "checkpoints or outputs written to a path that is not on a volume or bind mount",
)
def output_not_on_mount(service: Service) -> Iterator[Hit]:
    """The job writes checkpoints or outputs (named by an argument such as ``--output_dir``,
    ``output_dir=…``, yacs ``OUTPUT_DIR …``, a variable such as ``CHECKPOINT_DIR``, or a
    positional ``…/checkpoints`` path) to a path that no volume or bind mount holds. They land
    in the container's writable layer, and ``docker rm`` or ``compose down`` deletes them.
    Relative paths are resolved against ``working_dir``/``-w`` or the image's WORKDIR; when the
    working directory is unknown, a relative path is reported only if the container has no
    volume or bind mount at all (then no working directory could be on one)."""
    yield from _relative_outputs_without_mounts(service)
    for found in _outputs(service, "output"):
        assert found.path is not None
        mount = mount_for(found.path, service.mounts)
        if mount is not None:
            continue  # on a volume, a bind mount, or a tmpfs (CH005)
        yield Hit(
            found.value,
            f"{found.evidence} writes into the container's own layer: "
            + (
                "`--rm` deletes it the moment the container stops."
                if service.removed_on_exit
                else "`docker rm` (or `compose down`) deletes it with the container."
            ),
            f"Mount a named volume or a host folder at {found.path} "
            f"(e.g. `-v outputs:{found.path}`).",
            _relative_note(found, service),
            str(found.path),
        )


def _relative_outputs_without_mounts(service: Service) -> Iterator[Hit]:
    if workdir(service)[0] is not None or any(m.kind != "tmpfs" for m in service.mounts):
        return
    seen: set[str] = set()
    for found in path_uses(service):
        if found.use != "output" or found.path is not None or not relative_unknown(found.value):
            continue
        if str(found.value) in seen:
            continue
        seen.add(str(found.value))
        yield Hit(
            found.value,
            f"{found.evidence} is relative to a working directory lint does not know, but the "
            "container has no volume or bind mount at all, so wherever that directory is, the "
            "outputs stay in the container: "
            + (
                "`--rm` deletes them the moment it stops."
                if service.removed_on_exit
                else "`docker rm` (or `compose down`) deletes them with it."
            ),
            "Mount a named volume or a host folder and point the path at it (e.g. "
            f"`-v outputs:/outputs` and an absolute /outputs/{str(found.value).lstrip('./')}).",
            (
                found.evidence,
                "the working directory is unknown; the container has no volume or bind mount",
            ),
            str(found.value),
        )


@rule(
    "CH002",
    "cache-not-on-mount",
    "warning",
    "model or dataset downloads (HF_HOME, `--download-dir`, a server's model cache) not on a mount",
)
def cache_not_on_mount(service: Service) -> Iterator[Hit]:
    """Downloads go to a cache (``HF_HOME``, ``TORCH_HOME``, ``--cache-dir``,
    ``--download-dir``, or the model cache of a serving image such as vLLM, TGI or Ollama) that
    is not on a mount: every new container downloads the same models and datasets again."""
    caches = list(_outputs(service, "cache"))
    for found in caches:
        assert found.path is not None
        if _kept(mount_for(found.path, service.mounts)):
            continue
        yield Hit(
            found.value,
            f"{found.evidence}: downloads are kept in the container's layer and fetched again "
            "by every new container.",
            f"Mount a named cache volume at {found.path}.",
            _relative_note(found, service),
            str(found.path),
        )
    known = image_facts(service)
    if known is None or not known.cache_dirs or caches or service.image is None:
        return
    if any(_kept(mount_for(PurePosixPath(d), service.mounts)) for d in known.cache_dirs):
        return
    directory = known.cache_dirs[0]
    yield Hit(
        service.image,
        f"{known.label} downloads models into {directory}, which is not on a mount: every new "
        "container downloads them again.",
        f"Mount a named volume at {directory} (e.g. `-v models:{directory}`).",
        (f"image {service.image}: {known.label} keeps its model cache in {directory}",),
        directory,
    )


def _data_dirs(service: Service) -> tuple[list[str], str]:
    """Where a stateful service keeps its state, and why lint thinks so."""
    known = image_facts(service)
    words = workload_words(service)
    text = " ".join(words)
    if re.search(r"\bmlflow\s+(server|ui)\b", text):
        return _mlflow_dirs(service, words)
    if (
        service.image
        and repository(service.image) in ("redis", "redis/redis-stack-server", "valkey/valkey")
        and re.search(r"--appendonly\s+yes|--save\s+\d", text)
    ):
        return ["/data"], "redis-server is told to persist (--appendonly/--save) into /data"
    notebook = notebook_dir(service)
    if notebook is not None and notebook[0] is not None:
        return [notebook[0]], notebook[1]
    if known is None or not known.data_dirs:
        return [], ""
    if known.data_env and service.env.get(known.data_env):
        value = service.env[known.data_env]
        if not value.unresolved and value.startswith("/"):
            return [str(value)], f"{known.data_env}={value}"
    if known.label == "MinIO":
        server = [w for w in words if w.startswith("/")]
        if "server" in words and server:
            return [str(server[0])], f"minio server {server[0]}"
    return list(known.data_dirs), f"{known.label} keeps its data in {' or '.join(known.data_dirs)}"


def _mlflow_dirs(service: Service, words: list[Text]) -> tuple[list[str], str]:
    values: dict[str, str] = {}
    for index, word in enumerate(words):
        flag, eq, inline = word.partition("=")
        if flag in ("--backend-store-uri", "--default-artifact-root", "--artifacts-destination"):
            values[flag] = inline if eq else (words[index + 1] if index + 1 < len(words) else "")
    dirs: list[str] = []
    evidence: list[str] = []
    base, _ = workdir(service)
    backend = values.get("--backend-store-uri", "./mlruns")
    artifacts = values.get(
        "--artifacts-destination", values.get("--default-artifact-root", "./mlartifacts")
    )
    for flag, value in (("--backend-store-uri", backend), ("artifacts", artifacts)):
        local = re.sub(r"^(sqlite:///|file://)", "", value)
        if "://" in local or "$" in local:
            continue
        if local.startswith("/"):
            dirs.append(
                str(PurePosixPath(local).parent) if local.endswith((".db", ".sqlite")) else local
            )
        elif base:
            dirs.append(str(PurePosixPath(base) / local))
        elif not [m for m in service.mounts if m.kind != "tmpfs"]:
            dirs.append(f"./{local.lstrip('./')}")
        else:
            continue
        evidence.append(f"{flag} {value}" if flag in values else f"MLflow's default {value}")
    return dirs, "mlflow server: " + ", ".join(evidence)


@rule(
    "CH011",
    "state-not-on-volume",
    "error",
    "a database, object store, vector store, tracking server or notebook keeping its state "
    "outside any volume",
)
def state_not_on_volume(service: Service) -> Iterator[Hit]:
    """A stateful service (PostgreSQL, MySQL, MongoDB, MinIO, Qdrant, Milvus, Weaviate, Chroma,
    Elasticsearch, Label Studio, MLflow's metadata and artifacts, Jupyter's notebooks) has no
    named volume or bind mount on its data directory: ``compose down`` (or ``docker rm``) loses
    the data, and an anonymous volume is not re-attached to the next container. Jupyter is
    found anywhere in the command (``bash -c "pip install jupyterlab && jupyter lab …"``), and
    its notebooks are where ``--notebook-dir``/``--ServerApp.root_dir`` says, else in its
    working directory."""
    dirs, evidence = _data_dirs(service)
    if not dirs:
        return
    known = image_facts(service)
    notebook = (known is not None and known.role == "notebook") or (
        notebook_dir(service) is not None
    )
    mlflow = evidence.startswith("mlflow server")
    if any(
        (m := mount_for(PurePosixPath(d), service.mounts)) is not None and m.kind == "tmpfs"
        for d in dirs
        if d.startswith("/")
    ):
        return  # state put on a tmpfs on purpose: a throw-away database for tests

    def kept(directory: str) -> bool:
        if directory.startswith("./"):
            return False  # relative to an unknown working directory, with no mount at all
        path = PurePosixPath(directory)
        mount = mount_for(path, service.mounts)
        if mount is not None and mount.kind in ("volume", "bind"):
            return True
        return notebook and any(
            m.kind in ("volume", "bind") and path in (m.path, *m.path.parents)
            for m in service.mounts
        )

    # MLflow needs both its store and its artifacts kept; an image's alternatives need one.
    lost = [d for d in dirs if not kept(d)]
    if (mlflow and not lost) or (not mlflow and len(lost) < len(dirs)):
        return
    dirs = lost if mlflow else dirs
    where = service.image or service.where
    state = "notebooks" if notebook else "data"
    anonymous = [m for m in service.mounts if m.kind == "anonymous"]
    joined = (" and " if mlflow else " or ").join(dirs)
    fix = (
        "Give mlflow absolute paths (`--backend-store-uri sqlite:////mlflow/mlflow.db "
        "--default-artifact-root /mlflow/artifacts`) and mount a named volume at /mlflow."
        if dirs[0].startswith("./")
        else f"Mount a named volume there (e.g. `{service.name}-data:{dirs[0]}`)."
    )
    yield Hit(
        where,
        f"{service.name} keeps its {state} in {joined}, which no named volume or "
        "host folder holds: `compose down` or `docker rm` loses it"
        + (
            " (its anonymous volume is not re-attached to the next container)."
            if anonymous
            else "."
        ),
        fix,
        (evidence,),
        dirs[0],
    )


def _stateful_target(service: Service, mount: Mount) -> bool:
    dirs, _ = _data_dirs(service)
    return any(mount.holds(PurePosixPath(d)) or PurePosixPath(d) == mount.path for d in dirs)


@rule(
    "CH003",
    "anonymous-volume",
    "warning",
    "an anonymous volume holding outputs, caches or data: nameless, and not re-attached",
)
def anonymous_volume(service: Service) -> Iterator[Hit]:
    """An anonymous volume (``- /path`` with no name) holds something worth keeping -- outputs,
    checkpoints, caches, datasets: it is hard to find again, ``down -v`` and ``run --rm`` delete
    it, and the next container after ``down`` gets a new, empty one. Anonymous volumes on
    folders of no value (``node_modules``, build trees) are not reported."""
    uses = path_uses(service)
    for mount in service.mounts:
        if mount.kind != "anonymous" or _stateful_target(service, mount):
            continue
        why = [
            u.evidence
            for u in uses
            if u.path is not None
            and u.use != "input"
            and mount_for(u.path, service.mounts) is mount
        ]
        parts = _parts(mount.target) & (OUTPUT_PARTS | {"cache", ".cache", "models"})
        if parts:
            why.append(f"the path names {sorted(parts)[0]}")
        if not why:
            continue
        yield Hit(
            mount.target,
            f"Anonymous volume at {mount.target}: it has no name, `down -v` or `--rm` deletes "
            "it, and the next container after `down` starts with a new, empty one.",
            f"Give it a name: `NAME:{mount.target}` (and declare NAME under `volumes:`).",
            tuple(why),
            str(mount.target),
        )


def _names_dataset(path: str) -> bool:
    parts = [p.lower() for p in path.split("/") if p]
    split = any(a == "data" and b in _DATA_SPLITS for a, b in itertools.pairwise(parts))
    return bool(_name_parts(path) & _DATASET_PARTS) or split


def _own_part(service: Service, mount: Mount) -> str:
    """A bind source as its own name: ``./coco`` beside the compose file is ``coco``, whatever
    folder the project sits in (``~/corpus-tools/…`` names no dataset)."""
    source = str(mount.source or "")
    if mount.kind != "bind" or not source.startswith("/"):
        return source
    project = str(service.base_dir.resolve())
    if source == project:
        return "."
    return source[len(project) + 1 :] if source.startswith(project + "/") else source


def _dataset_evidence(service: Service, mount: Mount, training: bool) -> list[str]:
    """Why ``mount`` holds a dataset. A generic ``--data-dir``/``DATA_PATH`` counts only for a
    training job, or when the path it names is itself a dataset's."""
    evidence: list[str] = []
    for text, what in ((str(mount.target), "target"), (_own_part(service, mount), "source")):
        if what == "source" and mount.kind == "bind" and not mount.source:
            continue
        names = _name_parts(text) & _DATASET_PARTS
        parts = [p.lower() for p in text.split("/") if p]
        split = any(a == "data" and b in _DATA_SPLITS for a, b in itertools.pairwise(parts))
        if evidence:
            break
        if names:
            evidence.append(f"the {what} {text} names a dataset ({sorted(names)[0]})")
        elif split:
            evidence.append(f"the {what} {text} is a data split")
    for found in path_uses(service):
        if (
            found.use == "input"
            and found.path is not None
            and mount_for(found.path, service.mounts) is mount
            and (training or not found.generic or _names_dataset(str(found.path)))
        ):
            evidence.append(f"{found.evidence} reads it as input")
    return evidence


@rule(
    "CH004",
    "writable-dataset",
    "warning",
    "a training dataset mounted writable into a job that only needs to read it",
)
def writable_dataset(service: Service) -> Iterator[Hit]:
    """A mount holds a training dataset -- its path names one (``datasets``, ``coco``,
    ``data/train``…) or an input argument (``--data_dir``, ``DATA_DIR=``) reads from it -- and
    it is writable, though the job writes nothing there: a bug in training can modify or delete
    it. A generic ``--data-dir``/``DATA_PATH`` is a dataset only for a training job or when its
    path names one (a web UI's ``--data-dir`` is its state). Not reported for databases, object
    stores, web UIs and servers (their data is state, not a dataset), for data-preparation
    jobs, when the job writes into the mount, or for placeholders (``/path/to/your/data``)."""
    kind, _ = workload(service)
    known = image_facts(service)
    if kind in ("prep", "serving", "notebook", "tensorboard", "tracking"):
        return
    if known is not None and known.role not in ("training",):
        return
    # A training job, or any job an input argument shows reading the mount; a bare shell
    # (`docker run -it IMAGE`) may well download its dataset there.
    # A training job, or a Python job an input argument shows reading the mount (`--data-dir`
    # of a database is its state); a bare shell (`docker run -it IMAGE`) may well download its
    # dataset there.
    words = workload_words(service)
    python = any(w.rsplit("/", 1)[-1].startswith("python") or w.endswith(".py") for w in words)
    inputs = python and any(u.use == "input" for u in path_uses(service))
    if kind != "training" and not inputs:
        return
    base, _ = workdir(service)
    uses = path_uses(service)
    for mount in service.mounts:
        if mount.readonly or mount.kind not in ("bind", "volume") or mount.target.unresolved:
            continue
        if _placeholder_mount(mount):
            continue  # `-v /path/to/your/data:/data`: an example to fill in
        if (
            mount.kind == "bind"
            and mount.source is not None
            and (Path(str(mount.source)) in (service.base_dir, service.base_dir.parent))
        ):
            continue  # the project folder itself: code, not a dataset
        if base and (mount.holds(PurePosixPath(base)) or PurePosixPath(base) == mount.path):
            continue  # the working directory: the job's own files
        if _parts(mount.target) & _WRITTEN_PARTS:
            continue
        writes = [
            u
            for u in uses
            if u.use != "input"
            and u.path is not None
            and mount_for(u.path, service.mounts) is mount
        ]
        if writes:
            continue
        evidence = _dataset_evidence(service, mount, kind == "training")
        if not evidence:
            continue
        yield Hit(
            mount.target,
            f"The dataset at {mount.target} is mounted writable, and nothing in the job writes "
            "there: a bug in training can modify or delete it.",
            "Mount it read-only (`:ro`, or `read_only: true`).",
            tuple(evidence),
            str(mount.target),
        )


@rule("CH005", "outputs-on-tmpfs", "error", "checkpoints or outputs written to a tmpfs")
def outputs_on_tmpfs(service: Service) -> Iterator[Hit]:
    """Checkpoints or outputs go to a tmpfs (memory): they vanish when the container stops,
    and they fill the host's memory while it runs."""
    reported: set[str] = set()
    for found in _outputs(service, "output"):
        assert found.path is not None
        mount = mount_for(found.path, service.mounts)
        if mount is None or mount.kind != "tmpfs":
            continue
        reported.add(str(mount.target))
        yield Hit(
            found.value,
            f"{found.evidence} is on the tmpfs at {mount.target}: it vanishes when the "
            "container stops.",
            f"Mount a named volume at {mount.target} instead of a tmpfs.",
            (found.evidence, f"tmpfs at {mount.target}"),
            str(found.path),
        )
    for mount in service.mounts:
        if mount.kind != "tmpfs" or str(mount.target) in reported:
            continue
        parts = _parts(mount.target) & OUTPUT_PARTS
        if parts:
            yield Hit(
                mount.target,
                f"tmpfs at {mount.target}: checkpoints or outputs there vanish when the "
                "container stops.",
                f"Use a named volume at {mount.target}.",
                (f"the path names {sorted(parts)[0]}",),
                str(mount.target),
            )


def _missing_source(service: Service, mount: Mount) -> Path | None:
    """The bind source, when it is certain it does not exist on this host."""
    source = mount.source
    if mount.kind != "bind" or source is None or source.unresolved or not source:
        return None
    text = str(source)
    if looks_placeholder(text) or _SOCKET.search(text) or not text.startswith("/"):
        return None
    path = Path(text)
    project = service.base_dir.resolve()
    if not service.checkout or project not in path.parents:
        return None  # a path on the host it was written for, or not the project's own folder
    try:
        if path.exists() or path.is_symlink() or not path.parent.is_dir():
            return None  # it is there, or its folder is missing too
    except OSError:
        return None
    return path


def _file_like(mount: Mount, path: Path) -> bool:
    name, target = path.name, PurePosixPath(mount.target).name
    if name in _DOTFILES or target in _DOTFILES:
        return True
    if name == target and "." in name.lstrip("."):
        return True  # ./x.cfg:/etc/x.cfg: one file mounted over another
    return bool(_FILE_EXT.search(name)) or (bool(_FILE_EXT.search(target)) and "." in name)


@rule(
    "CH006",
    "missing-bind-file",
    "error",
    "a single-file bind source that does not exist: Docker creates a folder in its place",
)
def missing_bind_file(service: Service) -> Iterator[Hit]:
    """A bind mount of a single file (``./config.yaml:/app/config.yaml``) whose source does not
    exist: Docker creates an empty *folder* with that name, and the application fails reading
    its file. Placeholder paths (``/path/to/…``) and paths on another host are not reported."""
    for mount in service.mounts:
        path = _missing_source(service, mount)
        if path is None or not _file_like(mount, path):
            continue
        yield Hit(
            mount.source or mount.target,
            f"Bind source {path} does not exist: Docker creates a folder named "
            f"{path.name}, and the container finds a folder where it expects a file.",
            f"Create {path} before starting (or fix the path).",
            (f"{path.parent} exists, {path.name} does not", f"mounted at {mount.target}"),
            str(path),
        )


@rule(
    "CH012",
    "missing-bind-folder",
    "warning",
    "a missing bind folder that Docker will create as root, for a job that runs as non-root",
)
def missing_bind_folder(service: Service) -> Iterator[Hit]:
    """A writable bind mount's source folder does not exist and the job runs as a non-root user
    (``user:``, a Dockerfile ``USER``, or an image known to run as non-root, such as Jupyter's):
    Docker creates the folder owned by root, and the job cannot write into it."""
    who, why = run_user(service)
    if who != "non-root":
        return
    for mount in service.mounts:
        path = _missing_source(service, mount)
        if path is None or _file_like(mount, path) or mount.readonly:
            continue
        yield Hit(
            mount.source or mount.target,
            f"Bind source {path} does not exist: Docker creates it owned by root, and the job "
            "(not root) cannot write into it.",
            f"Create it first, owned by the job's user: `mkdir -p {path}`.",
            (f"{path} does not exist", why),
            str(path),
        )


@rule(
    "CH007",
    "bind-without-user",
    "warning",
    "a root job writing into a host folder: the files come out owned by root",
)
def bind_without_user(service: Service) -> Iterator[Hit]:
    """A job that runs as root (no ``user:``, and an image or Dockerfile known to run as root)
    writes outputs, checkpoints or caches into a bind-mounted host folder: the files come out
    owned by root, and you cannot edit or delete them without sudo. Not reported for images
    that run as non-root or drop privileges, for read-only consumers (TensorBoard, servers),
    nor for placeholder host folders (``/path/to/output``)."""
    who, why = run_user(service)
    kind, _ = workload(service)
    if who != "root" or kind in ("tensorboard", "serving", "tracking"):
        return
    known = image_facts(service)
    if known is not None and known.role not in ("training", "notebook"):
        return
    uses = [u for u in path_uses(service) if u.use != "input" and u.path is not None]
    candidates: list[tuple[int, Mount, list[str]]] = []
    for mount in service.mounts:
        if mount.kind != "bind" or mount.readonly or mount.source is None:
            continue
        if _placeholder_mount(mount):
            continue  # `-v /path/to/output:/output`: an example, not a host folder
        if _SOCKET.search(str(mount.source)) or str(mount.target).startswith(("/dev", "/sys")):
            continue
        mine = [u for u in uses if u.path and mount_for(u.path, service.mounts) is mount]
        writes = [u.evidence for u in mine]
        named = _parts(mount.target) & OUTPUT_PARTS
        if named:
            writes.append(f"the path names {sorted(named)[0]}")
        if writes:
            outputs = any(u.use == "output" for u in mine) or bool(named)
            candidates.append((0 if outputs else 1, mount, writes))
    if not candidates:
        return
    _, mount, writes = min(candidates, key=lambda c: c[0])
    yield Hit(
        mount.target,
        f"The job runs as root and writes into the host folder {mount.source}: the files "
        "come out owned by root.",
        'Set `user: "${UID}:${GID}"` (compose) or `--user $(id -u):$(id -g)`.',
        (*writes, why),
        str(mount.target),
    )


@rule(
    "CH008",
    "missing-shm-size",
    "warning",
    "GPU training with Docker's 64 MB /dev/shm (no `shm_size`, no `ipc: host`)",
)
def missing_shm_size(service: Service) -> Iterator[Hit]:
    """A training job with a GPU (a ``deploy`` GPU reservation, ``gpus``, ``runtime: nvidia``,
    ``--gpus``, ``nvidia-docker``) runs with Docker's default 64 MB ``/dev/shm``: PyTorch
    DataLoader workers and NCCL fail with "bus error" or hang. Decided from the GPU and the
    workload, not from keywords; servers and notebooks are not reported."""
    if service.gpu is None or service.shm is not None or service.ipc_host:
        return
    kind, why = workload(service)
    if kind != "training":
        return
    framework = " ".join([str(service.image or ""), *workload_words(service)]).lower()
    if re.search(r"tensorflow|keras|\bjax\b", framework) and "torch" not in framework:
        return  # /dev/shm is PyTorch's (DataLoader workers, NCCL), not TensorFlow's
    yield Hit(
        service.gpu,
        "GPU training with Docker's default 64 MB /dev/shm: DataLoader workers and NCCL "
        "crash with 'bus error' or hang.",
        "Set `shm_size: 8g` (compose) or `--shm-size 8g` (or `ipc: host`).",
        (f"a GPU: {service.gpu}", why),
        "shm",
    )


_ENGINE_TOOLS = {"infra"}


@rule(
    "CH009",
    "docker-socket-mounted",
    "error",
    "the Docker socket mounted into a job: root on the host for anything in it",
)
def docker_socket(service: Service) -> Iterator[Hit]:
    """The Docker (or Podman) socket is mounted: anything running in the container -- a
    dependency, a notebook cell, a model's custom code -- can start a privileged container and
    own the host. Not reported for tools whose job is the engine (proxies, dashboards, CI
    runners)."""
    known = image_facts(service)
    if known is not None and known.role in _ENGINE_TOOLS:
        return
    for mount in service.mounts:
        if mount.kind == "bind" and mount.source and _SOCKET.search(str(mount.source)):
            yield Hit(
                mount.source,
                f"The engine socket {mount.source} is mounted: anything in the container can "
                "take over the host.",
                "Remove the socket mount (cargohold jobs never need the engine).",
                (f"bind {mount.source} → {mount.target}",),
                str(mount.source),
            )


@rule("CH010", "privileged", "error", "a privileged container")
def privileged(service: Service) -> Iterator[Hit]:
    """The container is privileged: every device and capability of the host, no isolation.
    GPUs need ``--gpus`` or a device reservation, never ``privileged``."""
    if service.privileged is not None:
        yield Hit(
            service.privileged,
            "The container is privileged: it can do anything on the host.",
            "Drop privileged; grant GPUs with `--gpus`/a device reservation, and specific "
            "devices or capabilities if needed.",
            (f"privileged: {service.privileged}",),
            "privileged",
        )


def describe_image(service: Service) -> str | None:
    """A note when nothing is known about the service's image."""
    if service.build is not None or service.image is None:
        return None
    if service.image.unresolved:
        return f"{service.name}: the image {service.image} has an unset variable; not resolved."
    if image_facts(service) is None:
        where, _ = workdir(service)
        if where is None:
            return (
                f"{service.name}: image {repository(service.image) or service.image} is not one "
                "lint knows and no local Dockerfile describes it: its user and working "
                "directory are unknown, so rules that need them stayed silent."
            )
    return None
