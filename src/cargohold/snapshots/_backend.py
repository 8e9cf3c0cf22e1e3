"""Where a repository's files live: a local folder or any fsspec URL (``s3://bucket/prefix``).

A back end stores immutable named files and nothing else: ``put`` publishes a whole file at once
(temporary name + ``rename`` locally, one PUT on an object store), so a reader sees a file
completely or not at all; ``read`` can fetch a byte range (packs are read blob by blob). Names are
``kind/name`` pairs chosen by the repository (``packs/ab/<id>``, ``index/<id>``, …); a back end
never interprets them.

Durability on a local folder: a pack is written under ``tmp/``, fsynced, then renamed into place
and the folder fsynced, so a published pack is never missing bytes after a crash. ``tmp/`` files
carry their writer's session id, so the next writer can tell debris of a dead one (see
``repository.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from cargohold._atomic import fsync_dir
from cargohold.errors import TransferError
from cargohold.volumes import fsspec_filesystem

__all__ = ["Backend", "FsspecBackend", "LocalBackend", "RepositoryError", "fsspec_filesystem"]

_PUT_ATTEMPTS = 3  # uploads of one pack to an object store, the file rewound each time


class RepositoryError(TransferError):
    """The repository is missing, unreachable, damaged or refuses an operation."""


class Backend(Protocol):
    url: str
    local: bool

    def put(self, name: str, data: bytes) -> None: ...

    def put_file(self, name: str, path: str) -> None:
        """Publish a finished local file (which the back end may move or delete)."""
        ...

    def read(self, name: str, offset: int = 0, length: int = -1) -> bytes: ...

    def exists(self, name: str) -> bool: ...

    def list(self, folder: str) -> list[tuple[str, int]]:
        """(name, size) of every file under ``folder``, recursively, names relative to root."""
        ...

    def delete(self, name: str) -> None: ...

    def mtime(self, name: str) -> float: ...

    def temp_file(self, session: str) -> str:
        """A new local temporary file for a pack being written by ``session``."""
        ...


_DAMAGED = "The repository is damaged: `cargohold repo check` lists what is missing."
# What to check when an object store refuses or cannot be reached (every remote back end).
REMOTE_HINT = "Check the URL, the credentials (AWS_ACCESS_KEY_ID, …) and CARGOHOLD_S3_ENDPOINT."


def _missing(url: str, name: str) -> RepositoryError:
    return RepositoryError(f"{name} is missing from the repository {url}.", hint=_DAMAGED)


def _short(url: str, name: str) -> RepositoryError:
    return RepositoryError(f"{name} in {url} is shorter than its index says.", hint=_DAMAGED)


def pack_file(folder: str | Path, session: str) -> str:
    """A new empty local file in ``folder`` for a pack being written by ``session`` (its name
    starts with the session, so the next writer can tell a dead one's debris)."""
    fd, path = tempfile.mkstemp(prefix=f"{session}-", dir=folder)
    os.close(fd)
    return path


class LocalBackend:
    local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.root / name

    def put(self, name: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".put-", dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.put_file(name, tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def put_file(self, name: str, path: str) -> None:
        final = self._path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(path, final)
        fsync_dir(final.parent)

    def read(self, name: str, offset: int = 0, length: int = -1) -> bytes:
        try:
            with self._lock:
                fd = self._fds.get(name)
                if fd is None:
                    if len(self._fds) > 64:
                        for old in self._fds.values():
                            os.close(old)
                        self._fds.clear()
                    fd = self._fds[name] = os.open(self._path(name), os.O_RDONLY)
            if length < 0:
                length = os.fstat(fd).st_size - offset
            data = os.pread(fd, length, offset)
        except FileNotFoundError:
            raise _missing(self.url, name) from None
        if len(data) != length:
            raise _short(self.url, name)
        return data

    def forget_handles(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def list(self, folder: str) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        base = self.root / folder
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    found.append((f"{rel}/{name}", os.lstat(os.path.join(dirpath, name)).st_size))
        return sorted(found)

    def delete(self, name: str) -> None:
        with self._lock:
            fd = self._fds.pop(name, None)
            if fd is not None:
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))

    def mtime(self, name: str) -> float:
        return os.stat(self._path(name)).st_mtime

    def temp_file(self, session: str) -> str:
        return pack_file(self.root / "tmp", session)

    # -- liveness of writers: a live writer holds an flock on its session file ------------

    def hold(self, name: str, data: bytes) -> int:
        """Write ``name`` and keep it locked for as long as this process lives."""
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return fd

    def held(self, name: str) -> bool:
        """Whether a live process holds ``name`` (a dead one's flock went with it)."""
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


class FsspecBackend:
    """Any fsspec file system. Each ``put`` is one PUT; ``read`` of a range is one ranged GET."""

    local = False

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec_filesystem(self.url)
        except (ImportError, ValueError) as exc:
            raise RepositoryError(
                f"Cannot open repository {url}: {exc}.", hint="For s3:// URLs, `pip install s3fs`."
            ) from None
        self.root = self.root.rstrip("/")
        self._tmp = tempfile.mkdtemp(prefix="cargohold-packs-")

    def _full(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except RepositoryError:
            raise
        except Exception as exc:  # fsspec back ends raise their own exception types
            raise RepositoryError(f"{what} {self.url} failed: {exc}.", hint=REMOTE_HINT) from None

    def ensure_bucket(self) -> None:
        if self.url.startswith("s3://"):
            bucket = self.root.split("/")[0]
            if not self._call("Reaching", self.fs.exists, bucket):
                self._call("Creating the bucket of", self.fs.mkdir, bucket)

    def put(self, name: str, data: bytes) -> None:
        self._call("Writing to", self.fs.pipe_file, self._full(name), data)

    def put_file(self, name: str, path: str) -> None:
        try:
            if self.url.startswith("s3://"):
                self._call("Uploading to", self._put_s3_file, name, path)
            else:
                self._call("Uploading to", self.fs.put_file, path, self._full(name))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _put_s3_file(self, name: str, path: str) -> None:
        """The file as the request body, read as it is sent: fsspec's put_file read a whole
        pack into memory first (four uploads at once held ~150 MB). The client is called
        directly, each attempt with the file rewound: s3fs's own retry would send the same,
        already read file object again, and botocore sizes a body from where it stands (a
        cut connection then failed the upload, or could store only the file's rest)."""
        from fsspec.asyn import sync

        bucket, _, key = self._full(name).partition("/")
        for attempt in range(_PUT_ATTEMPTS):
            with open(path, "rb") as body:
                try:
                    client = sync(self.fs.loop, self.fs.set_session)
                    sync(self.fs.loop, client.put_object, Bucket=bucket, Key=key, Body=body)
                    return
                except Exception:
                    if attempt + 1 == _PUT_ATTEMPTS:
                        raise
                    time.sleep(0.5 * 2**attempt)

    def read(self, name: str, offset: int = 0, length: int = -1) -> bytes:
        end = None if length < 0 else offset + length
        try:
            data: bytes = self._call(
                "Reading from", self.fs.cat_file, self._full(name), start=offset or None, end=end
            )
        except FileNotFoundError:
            raise _missing(self.url, name) from None
        if length >= 0 and len(data) != length:
            raise _short(self.url, name)
        return data

    def exists(self, name: str) -> bool:
        return bool(self._call("Reaching", self.fs.exists, self._full(name)))

    def list(self, folder: str) -> list[tuple[str, int]]:
        try:
            found = self._call("Listing", self.fs.find, self._full(folder), detail=True)
        except FileNotFoundError:
            return []
        prefix = self.root + "/"
        return sorted(
            (str(path).removeprefix(prefix), int(info.get("size") or 0))
            for path, info in found.items()
            if info.get("type") != "directory"
        )

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("Deleting from", self.fs.rm_file, self._full(name))

    def mtime(self, name: str) -> float:
        info = self._call("Reaching", self.fs.info, self._full(name))
        modified = info.get("LastModified") or info.get("mtime") or info.get("created")
        if hasattr(modified, "timestamp"):
            return float(modified.timestamp())
        return float(modified or 0)

    def temp_file(self, session: str) -> str:
        return pack_file(self._tmp, session)
