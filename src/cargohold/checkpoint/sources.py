"""What a checkpoint file can be made from: bytes, a writer function, or a framework object.

``save`` writes each source straight to disk. ``save_async`` must return before the training loop
changes its tensors, so it first *captures* every source: bytes are kept, a writer function is
run into memory, and the framework helpers copy their tensors (a fast memory copy) and leave the
slow serialisation and fsync to the background thread.

The framework helpers import their framework only when called, so this package stays standard
library only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, Protocol, runtime_checkable

__all__ = [
    "FileSource",
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

    def capture(self) -> FileSource:
        """A copy that no later change of the caller's objects can alter."""


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def write(self, f: BinaryIO) -> None:
        f.write(self._data)

    def capture(self) -> FileSource:
        return self


class _WriterFunction:
    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    def write(self, f: BinaryIO) -> None:
        self._writer(f)

    def capture(self) -> FileSource:
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


def _copy_tree(obj: Any, copy_leaf: Callable[[Any], Any]) -> Any:
    if isinstance(obj, Mapping):
        copied: Any = type(obj)((k, _copy_tree(v, copy_leaf)) for k, v in obj.items())  # type: ignore[call-arg]
        if hasattr(obj, "_metadata"):
            # PyTorch state dicts carry `_metadata`, which load_state_dict uses.
            copied._metadata = obj._metadata
        return copied
    if isinstance(obj, list):
        return [_copy_tree(v, copy_leaf) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_copy_tree(v, copy_leaf) for v in obj)
    return copy_leaf(obj)


class _Torch:
    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def write(self, f: BinaryIO) -> None:
        import torch

        torch.save(self._obj, f)

    def capture(self) -> FileSource:
        import torch

        def leaf(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.detach().to("cpu", copy=True)
            return value

        return _Torch(_copy_tree(self._obj, leaf))


def torch_file(obj: Any) -> FileSource:
    """A file written with ``torch.save`` (state dicts, optimizer states, nested containers)."""
    return _Torch(obj)


class _Numpy:
    def __init__(self, arrays: Any) -> None:
        self._arrays = arrays

    def write(self, f: BinaryIO) -> None:
        import numpy as np

        if isinstance(self._arrays, Mapping):
            np.savez(f, **self._arrays)
        else:
            np.save(f, self._arrays, allow_pickle=False)

    def capture(self) -> FileSource:
        import numpy as np

        def leaf(value: Any) -> Any:
            return np.array(value, copy=True) if isinstance(value, np.ndarray) else value

        return _Numpy(_copy_tree(self._arrays, leaf))


def numpy_file(arrays: Any) -> FileSource:
    """One array (``.npy``) or a mapping of named arrays (``.npz``)."""
    return _Numpy(arrays)


class _Safetensors:
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

    def capture(self) -> FileSource:
        buffer = io.BytesIO()
        self.write(buffer)
        return _Bytes(buffer.getvalue())


def safetensors_file(
    tensors: Mapping[str, Any], metadata: dict[str, str] | None = None
) -> FileSource:
    """A ``.safetensors`` file from a flat mapping of torch tensors or NumPy arrays."""
    return _Safetensors(tensors, metadata)
