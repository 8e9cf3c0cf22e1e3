"""Where snapshots live: a content-addressed repository in a local folder or any fsspec URL.

    <repo>/cargohold-repository.json    marks the folder as a repository (format, version)
    <repo>/objects/ab/abcdef…           zstd-compressed file contents, named by the sha256 of
                                        the uncompressed bytes: identical data is stored once
    <repo>/snapshots/<id>.json          one manifest per snapshot, written last

Nothing is ever modified in place, so two snapshots into one repository at once cannot corrupt
it: an object is published by an atomic rename (local) or a single PUT (object stores), and two
writers of the same object write the same bytes under the same name; manifests have unique ids.
On a local folder, new objects are first written under temporary names, made durable with one
``syncfs`` of the repository's file system (not one fsync per object: ten thousand small files
would take longer to flush than to write), and only then renamed into place; the manifest goes
last. A crash leaves temporary files (removed by the next snapshot) and never a published object
with missing bytes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from cargohold._atomic import fsync_dir, write_bytes_atomic
from cargohold.errors import TransferError

__all__ = ["Repository", "RepositoryError", "default_repo_url", "open_repository"]

MARKER = "cargohold-repository.json"
REPO_ENV = "CARGOHOLD_REPO"


class RepositoryError(TransferError):
    pass


def default_repo_url() -> str:
    """``$CARGOHOLD_REPO``, else ``$XDG_DATA_HOME/cargohold/snapshots`` (per user)."""
    if os.environ.get(REPO_ENV):
        return os.environ[REPO_ENV]
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data, "cargohold", "snapshots")


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def fsspec_filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system and path of a URL; ``CARGOHOLD_S3_ENDPOINT`` points s3:// at
    any S3-compatible server (MinIO, Ceph radosgw, …)."""
    import fsspec

    options: dict[str, Any] = {}
    if url.startswith("s3://") and os.environ.get("CARGOHOLD_S3_ENDPOINT"):
        options["client_kwargs"] = {"endpoint_url": os.environ["CARGOHOLD_S3_ENDPOINT"]}
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, str(path)


class Repository:
    """Base: the operations a snapshot needs. Objects are staged in a local temporary file."""

    url: str

    def existing_objects(self) -> set[str]:
        raise NotImplementedError

    def staging_file(self) -> tuple[IO[bytes], str]:
        """A new temporary file for an object's compressed bytes, and its path."""
        raise NotImplementedError

    def stage_object(self, staged: str, digest: str) -> None:
        """Hand a finished temporary file over as object ``digest`` (published by ``commit``)."""
        raise NotImplementedError

    def discard(self, staged: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(staged)

    def commit(self) -> None:
        """Make every staged object durable and visible."""

    def abort(self) -> None:
        """Drop every staged object (a failed snapshot publishes nothing)."""

    def open_object(self, digest: str) -> IO[bytes]:
        raise NotImplementedError

    def write_manifest(self, snapshot_id: str, data: bytes) -> None:
        raise NotImplementedError

    def manifest_ids(self) -> list[str]:
        raise NotImplementedError

    def read_manifest(self, snapshot_id: str) -> dict[str, Any]:
        raise NotImplementedError


class LocalRepository(Repository):
    def __init__(self, root: Path, *, create: bool) -> None:
        self.root = root
        self.url = str(root)
        marker = root / MARKER
        if not marker.exists():
            if not create:
                raise RepositoryError(
                    f"No snapshot repository at {root}.",
                    hint="Take a snapshot first (`cargohold snapshot VOLUME --repo …`), or check "
                    "the --repo URL.",
                )
            # Another snapshot may be creating the repository right now: only foreign content
            # makes the folder unusable.
            ours = {"objects", "snapshots", "tmp", MARKER}
            if root.exists() and any(
                p.name not in ours and not p.name.startswith(f".{MARKER}.") for p in root.iterdir()
            ):
                raise RepositoryError(
                    f"{root} is not empty and is not a cargohold repository.",
                    hint="Pick an empty or new folder for --repo.",
                )
            try:
                for sub in ("objects", "snapshots", "tmp"):
                    (root / sub).mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(
                    marker, json.dumps({"format": "cargohold-repository", "version": 1}).encode()
                )
            except OSError as exc:
                raise RepositoryError(
                    f"Cannot create a repository at {root}: {exc.strerror}.",
                    hint="Check permissions and free space.",
                ) from None
        self._staged: list[tuple[str, str]] = []
        self._clean_stale_tmp()

    def _clean_stale_tmp(self) -> None:
        # Temporary objects of writers that died. A live writer's are younger than a day.
        import time

        tmp = self.root / "tmp"
        with contextlib.suppress(OSError):
            for entry in os.scandir(tmp):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < time.time() - 86400:
                        os.unlink(entry.path)

    def _object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest

    def existing_objects(self) -> set[str]:
        found: set[str] = set()
        objects = self.root / "objects"
        for sub in os.scandir(objects):
            if sub.is_dir():
                found.update(e.name for e in os.scandir(sub.path))
        return found

    def staging_file(self) -> tuple[IO[bytes], str]:
        fd, path = tempfile.mkstemp(prefix="obj-", dir=self.root / "tmp")
        return os.fdopen(fd, "wb"), path

    def stage_object(self, staged: str, digest: str) -> None:
        self._staged.append((staged, digest))

    def abort(self) -> None:
        for staged, _ in self._staged:
            self.discard(staged)
        self._staged.clear()

    def commit(self) -> None:
        if not self._staged:
            return
        _syncfs(self.root)  # every staged object's bytes are on disk before any is published
        folders: set[Path] = set()
        for staged, digest in self._staged:
            final = self._object_path(digest)
            if final.exists():
                self.discard(staged)
                continue
            final.parent.mkdir(exist_ok=True)
            os.rename(staged, final)
            folders.add(final.parent)
        for folder in folders | {self.root / "objects"}:
            fsync_dir(folder)
        self._staged.clear()

    def open_object(self, digest: str) -> IO[bytes]:
        try:
            return open(self._object_path(digest), "rb")
        except FileNotFoundError:
            raise RepositoryError(
                f"Object {digest[:12]}… is missing from {self.url}.",
                hint="The repository is damaged; restore from another one.",
            ) from None

    def write_manifest(self, snapshot_id: str, data: bytes) -> None:
        write_bytes_atomic(self.root / "snapshots" / f"{snapshot_id}.json", data)

    def manifest_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "snapshots").glob("*.json"))

    def read_manifest(self, snapshot_id: str) -> dict[str, Any]:
        path = self.root / "snapshots" / f"{snapshot_id}.json"
        try:
            return dict(json.loads(path.read_bytes()))
        except FileNotFoundError:
            raise RepositoryError(
                f"No snapshot {snapshot_id} in {self.url}.",
                hint="`cargohold snapshots` lists them.",
            ) from None
        except (OSError, ValueError) as exc:
            raise RepositoryError(
                f"Snapshot manifest {snapshot_id} is unreadable: {exc}.",
                hint="The repository is damaged.",
            ) from None


class FsspecRepository(Repository):
    """Any fsspec file system (``s3://bucket/prefix`` …). Objects are PUT whole, once each."""

    def __init__(self, url: str, *, create: bool) -> None:

        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec_filesystem(self.url)
        except (ImportError, ValueError) as exc:
            raise RepositoryError(
                f"Cannot open repository {url}: {exc}.", hint="For s3:// URLs, `pip install s3fs`."
            ) from None
        self._tmp = tempfile.mkdtemp(prefix="cargohold-objects-")
        try:
            has_marker = self.fs.exists(f"{self.root}/{MARKER}")
            if not has_marker:
                if not create:
                    raise RepositoryError(
                        f"No snapshot repository at {url}.",
                        hint="Take a snapshot first, or check the URL.",
                    )
                if url.startswith("s3://"):
                    bucket = self.root.split("/")[0]
                    if not self.fs.exists(bucket):
                        self.fs.mkdir(bucket)
                self.fs.pipe_file(
                    f"{self.root}/{MARKER}",
                    json.dumps({"format": "cargohold-repository", "version": 1}).encode(),
                )
        except RepositoryError:
            raise
        except Exception as exc:  # fsspec back ends raise their own exception types
            raise RepositoryError(
                f"Cannot reach repository {url}: {exc}.",
                hint="Check the URL, the credentials (AWS_ACCESS_KEY_ID, …) "
                "and CARGOHOLD_S3_ENDPOINT.",
            ) from None

    def existing_objects(self) -> set[str]:
        try:
            return {p.rsplit("/", 1)[-1] for p in self.fs.find(f"{self.root}/objects")}
        except FileNotFoundError:
            return set()

    def staging_file(self) -> tuple[IO[bytes], str]:
        fd, path = tempfile.mkstemp(prefix="obj-", dir=self._tmp)
        return os.fdopen(fd, "wb"), path

    def stage_object(self, staged: str, digest: str) -> None:
        try:
            self.fs.put_file(staged, f"{self.root}/objects/{digest[:2]}/{digest}")
        except Exception as exc:
            raise RepositoryError(
                f"Uploading to {self.url} failed: {exc}.",
                hint="Check the connection and credentials; nothing was "
                "published without its manifest.",
            ) from None
        finally:
            self.discard(staged)

    def open_object(self, digest: str) -> IO[bytes]:
        try:
            return self.fs.open(  # type: ignore[no-any-return]
                f"{self.root}/objects/{digest[:2]}/{digest}",
                "rb",
                block_size=8 << 20,
            )
        except FileNotFoundError:
            raise RepositoryError(
                f"Object {digest[:12]}… is missing from {self.url}.",
                hint="The repository is damaged.",
            ) from None

    def write_manifest(self, snapshot_id: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.root}/snapshots/{snapshot_id}.json", data)

    def manifest_ids(self) -> list[str]:
        try:
            paths = self.fs.glob(f"{self.root}/snapshots/*.json")
        except FileNotFoundError:
            return []
        return sorted(p.rsplit("/", 1)[-1][: -len(".json")] for p in paths)

    def read_manifest(self, snapshot_id: str) -> dict[str, Any]:
        try:
            return dict(json.loads(self.fs.cat_file(f"{self.root}/snapshots/{snapshot_id}.json")))
        except FileNotFoundError:
            raise RepositoryError(
                f"No snapshot {snapshot_id} in {self.url}.",
                hint="`cargohold snapshots` lists them.",
            ) from None


def open_repository(url: str | None = None, *, create: bool = False) -> Repository:
    """The repository at ``url`` (default: ``default_repo_url()``).

    Raises:
        RepositoryError: it does not exist (and ``create`` is False) or cannot be reached.
    """
    url = url or default_repo_url()
    if "://" in url and not url.startswith("file://"):
        return FsspecRepository(url, create=create)
    path = Path(url.removeprefix("file://")).expanduser()
    try:
        return LocalRepository(path, create=create)
    except PermissionError as exc:
        raise RepositoryError(
            f"Repository {path} is not readable: {exc.strerror}.",
            hint="Check its permissions, or use another --repo.",
        ) from None
