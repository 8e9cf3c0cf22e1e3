"""What a checkpoint file can be made from: bytes, a writer function, or a framework object.

``save`` writes each source straight to disk. ``save_async`` must return before the training loop
changes its tensors, so it first *captures* every source: bytes are kept, a writer function is
run into memory, and the framework helpers copy their tensors (a fast memory copy) and leave the
slow serialisation and fsync to the background thread. The copies go into staging buffers kept
from the previous asynchronous save (it has finished by then), so that capturing a 500 MB state
dict is a plain memory copy, without a page fault per page.

The framework helpers import their framework only when called, so this package stays standard
library only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, Protocol, runtime_checkable

__all__ = [
    "FileSource",
    "StagingPool",
    "Writer",
    "as_source",
    "numpy_file",
    "safetensors_file",
    "torch_file",
]

Writer = Callable[[BinaryIO], Any]


@runtime_checkable
class FileSource(Protocol):
    def write(self, f: BinaryIO) -> None:
        """Write the file's bytes to ``f``."""

    def capture(self, staging: dict[Any, Any] | None = None) -> FileSource:
        """A copy that no later change of the caller's objects can alter.

        ``staging`` holds buffers this source may reuse from its previous capture.
        """


class StagingPool:
    """Per-file staging areas for captures, reused from one asynchronous save to the next."""

    def __init__(self) -> None:
        self._areas: dict[str, dict[Any, Any]] = {}

    def area(self, name: str) -> dict[Any, Any]:
        return self._areas.setdefault(name, {})


class _Bytes:
    stream_only = True  # write() only calls f.write: cargohold may checksum it on the way

    def __init__(self, data: bytes) -> None:
        self._data = data

    def write(self, f: BinaryIO) -> None:
        f.write(self._data)

    def capture(self, staging: dict[Any, Any] | None = None) -> FileSource:
        return self


class _WriterFunction:
    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    def write(self, f: BinaryIO) -> None:
        self._writer(f)

    def capture(self, staging: dict[Any, Any] | None = None) -> FileSource:
        buffer = io.BytesIO()
        self._writer(buffer)
        return _Bytes(buffer.getvalue())


def as_source(value: object) -> FileSource:
    """Accept what ``save`` accepts: bytes-like, a callable writer, or a ``FileSource``.

    Raises:
        TypeError: anything else.
    """
    if isinstance(value, bytes):
        return _Bytes(value)
    if isinstance(value, bytearray | memoryview):
        return _Bytes(bytes(value))
    if isinstance(value, FileSource):
        return value
    if callable(value):
        return _WriterFunction(value)
    raise TypeError(
        f"a checkpoint file must be bytes, a function that writes to a binary file, or a "
        f"helper such as torch_file(...); got {type(value).__name__}"
    )


def _copy_tree(
    obj: Any, copy_leaf: Callable[[Any, tuple[Any, ...]], Any], path: tuple[Any, ...] = ()
) -> Any:
    if isinstance(obj, Mapping):
        copied: Any = type(obj)(
            (k, _copy_tree(v, copy_leaf, (*path, k)))
            for k, v in obj.items()  # type: ignore[call-arg]
        )
        if hasattr(obj, "_metadata"):
            # PyTorch state dicts carry `_metadata`, which load_state_dict uses.
            copied._metadata = obj._metadata
        return copied
    if isinstance(obj, list | tuple):
        return type(obj)(_copy_tree(v, copy_leaf, (*path, i)) for i, v in enumerate(obj))
    return copy_leaf(obj, path)


class _Torch:
    stream_only = True  # write() only calls f.write: cargohold may checksum it on the way

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def write(self, f: BinaryIO) -> None:
        import torch

        torch.save(self._obj, f)

    def capture(self, staging: dict[Any, Any] | None = None) -> FileSource:
        import torch

        pool = {} if staging is None else staging

        def leaf(value: Any, path: tuple[Any, ...]) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            buffer = pool.get(path)
            if (
                buffer is None
                or buffer.shape != value.shape
                or buffer.dtype != value.dtype
                or value.layout != torch.strided
            ):
                buffer = torch.empty(value.shape, dtype=value.dtype, device="cpu")
                pool[path] = buffer
            buffer.copy_(value.detach())
            return buffer

        return _Torch(_copy_tree(self._obj, leaf))


def torch_file(obj: Any) -> FileSource:
    """A file written with ``torch.save`` (state dicts, optimizer states, nested containers)."""
    return _Torch(obj)


class _Numpy:
    stream_only = True  # write() only calls f.write: cargohold may checksum it on the way

    def __init__(self, arrays: Any) -> None:
        self._arrays = arrays

    def write(self, f: BinaryIO) -> None:
        import numpy as np

        if isinstance(self._arrays, Mapping):
            np.savez(f, **self._arrays)
        else:
            np.save(f, self._arrays, allow_pickle=False)

    def capture(self, staging: dict[Any, Any] | None = None) -> FileSource:
        import numpy as np

        pool = {} if staging is None else staging

        def leaf(value: Any, path: tuple[Any, ...]) -> Any:
            if not isinstance(value, np.ndarray):
                return value
            buffer = pool.get(path)
            if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                buffer = np.empty_like(value)
                pool[path] = buffer
            np.copyto(buffer, value)
            return buffer

        return _Numpy(_copy_tree(self._arrays, leaf))


def numpy_file(arrays: Any) -> FileSource:
    """One array (``.npy``) or a mapping of named arrays (``.npz``)."""
    return _Numpy(arrays)


class _Safetensors:
    stream_only = True  # write() only calls f.write: cargohold may checksum it on the way

    def __init__(self, tensors: Mapping[str, Any], metadata: dict[str, str] | None) -> None:
        self._tensors = tensors
        self._metadata = metadata

    def write(self, f: BinaryIO) -> None:
        first = next(iter(self._tensors.values()), None)
        if type(first).__module__.startswith("torch"):
            from safetensors.torch import save
        else:
            from safetensors.numpy import save
        f.write(save(dict(self._tensors), metadata=self._metadata))

    def capture(self, staging: dict[Any, Any] | None = None) -> FileSource:
        buffer = io.BytesIO()
        self.write(buffer)
        return _Bytes(buffer.getvalue())


def safetensors_file(
    tensors: Mapping[str, Any], metadata: dict[str, str] | None = None
) -> FileSource:
    """A ``.safetensors`` file from a flat mapping of torch tensors or NumPy arrays."""
    return _Safetensors(tensors, metadata)
