"""The errors every layer shares, in one tree (a few layers add leaves of their own, listed
at the end, so that this module stays free of what they know).

    CargoholdError                  base; carries a ``hint`` that says what to do next
    ├── SpecError                   cargohold.toml is malformed or inconsistent (exit 2)
    ├── UsageError                  a command was called with arguments that cannot work (exit 2)
    ├── EngineError                 the Docker engine refused or failed (exit 3)
    │   ├── EngineUnavailable       no daemon could be reached
    │   ├── ImageNotFound           an image is neither local nor pullable
    │   ├── BuildFailed             ``docker build`` of a job's image failed
    │   ├── ContainerNotFound       a container does not exist (the engine answered)
    │   ├── PathNotFound            a path is not in a volume (the engine answered)
    │   └── VolumeNotFound          a named volume does not exist
    ├── TransferError               moving data in or out of a volume failed
    │   ├── UnsafeArchive           an archive member would escape its target
    │   └── ChecksumMismatch        data changed on the way
    └── CheckpointError             the in-container checkpoint library failed

Defined where they are raised:

    TransferError ── RepositoryError        a snapshot repository is unreachable or damaged
                                            (``snapshots/_backend.py``)
    CargoholdError ─┬ PasswordError         an encrypted repository's password is missing or
                    │                       wrong, exit 5 (``snapshots/_format.py``)
                    ├ MirrorUnreachable     a checkpoint mirror cannot be reached, exit 3
                    └ MirrorAuthError       a checkpoint mirror refused the credentials, exit 2
                                            (both ``mirror.py``)

The CLI maps the tree to exit codes in one place (``main`` in ``cli/__init__.py``); library
code raises and never prints. This module imports nothing outside the standard library, because
``cargohold.checkpoint`` runs inside training images where only the stdlib can be assumed.
"""

from __future__ import annotations

__all__ = [
    "BuildFailed",
    "CargoholdError",
    "CheckpointError",
    "ChecksumMismatch",
    "ContainerNotFound",
    "EngineError",
    "EngineUnavailable",
    "ImageNotFound",
    "PathNotFound",
    "SpecError",
    "TransferError",
    "UnsafeArchive",
    "UsageError",
    "VolumeNotFound",
]


class CargoholdError(Exception):
    """Base of every cargohold error. ``hint`` tells the user what to do next."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class SpecError(CargoholdError):
    """The spec file cannot be used as written. ``key`` names the offending key, if one does."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, key: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key = key


class UsageError(CargoholdError):
    exit_code = 2


class EngineError(CargoholdError):
    exit_code = 3


class EngineUnavailable(EngineError):
    pass


class ImageNotFound(EngineError):
    pass


class BuildFailed(EngineError):
    pass


class ContainerNotFound(EngineError):
    """The engine answered: there is no such container (not: the engine is gone)."""


class PathNotFound(EngineError):
    """A path is not in a volume: the engine answered, it is not there (never a failure)."""


class VolumeNotFound(EngineError):
    pass


class TransferError(CargoholdError):
    pass


class UnsafeArchive(TransferError):
    pass


class ChecksumMismatch(TransferError):
    pass


class CheckpointError(CargoholdError):
    pass
