"""The S3 client of our own (``snapshots/_s3.py``) against a real S3 server (radosgw): every
back-end operation, paging, errors, threads, and a connection cut in the middle of an upload.
Each test has a bucket of its own and removes it, whatever happens."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cargohold.snapshots._backend import RepositoryError
from cargohold.snapshots._s3 import S3Backend, s3_backend
from tests.conftest import remove_bucket, s3_filesystem


class Store:
    def __init__(self, backend: S3Backend, bucket: str, fs: Any, endpoint: dict[str, str]):
        self.backend, self.bucket, self.fs, self.endpoint = backend, bucket, fs, endpoint


@pytest.fixture
def store(s3_endpoint: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """An S3Backend (made by the factory, from the environment) on a bucket not yet created."""
    for key, value in s3_endpoint.items():
        monkeypatch.setenv(key, value)
    bucket = f"cht-s3b-{os.getpid()}-{random.randrange(1 << 30):x}"
    fs = s3_filesystem(s3_endpoint)
    backend = s3_backend(f"s3://{bucket}/repo")
    assert isinstance(backend, S3Backend)
    try:
        yield Store(backend, bucket, fs, s3_endpoint)
    finally:
        backend.close()
        remove_bucket(fs, bucket)


def test_ensure_bucket_creates_the_bucket(store: Store) -> None:
    store.fs.invalidate_cache()
    assert not store.fs.exists(store.bucket)
    store.backend.ensure_bucket()
    store.fs.invalidate_cache()
    assert store.fs.exists(store.bucket)
    store.backend.ensure_bucket()  # there already: nothing to do


def test_put_and_read_whole_and_ranged(store: Store) -> None:
    backend = store.backend
    backend.ensure_bucket()
    data = random.Random(1).randbytes(1 << 20)
    backend.put("packs/ab/0123456789abcdef", data)
    assert backend.read("packs/ab/0123456789abcdef") == data
    assert backend.read("packs/ab/0123456789abcdef", 0, 10) == data[:10]
    assert (
        backend.read("packs/ab/0123456789abcdef", 123_457, 65_536)
        == data[123_457 : 123_457 + 65_536]
    )
    assert backend.read("packs/ab/0123456789abcdef", (1 << 20) - 5) == data[-5:]
    assert backend.read("packs/ab/0123456789abcdef", 7, 0) == b""
    with pytest.raises(RepositoryError, match="shorter than its index says"):
        backend.read("packs/ab/0123456789abcdef", (1 << 20) - 5, 10)
    with pytest.raises(RepositoryError, match="shorter than its index says"):
        backend.read("packs/ab/0123456789abcdef", 2 << 20, 10)
    # where it lands, as others see it; a name with characters SigV4 encodes
    assert store.fs.cat(f"{store.bucket}/repo/packs/ab/0123456789abcdef") == data
    odd = "snapshots/2024-01-01T00:00:00+01:00 (copy)~=&é"
    backend.put(odd, b"record")
    assert backend.read(odd) == b"record"
    assert store.fs.cat(f"{store.bucket}/repo/{odd}") == b"record"
    backend.put("repository.json", b"")  # an empty body too
    assert backend.read("repository.json") == b""


def test_put_file_streams_the_file_and_removes_it(store: Store) -> None:
    backend = store.backend
    backend.ensure_bucket()
    path = Path(backend.temp_file("1700000000-abcd"))
    assert path.exists() and path.name.startswith("1700000000-abcd-")
    data = random.Random(2).randbytes(16 << 20)
    path.write_bytes(data)
    tracemalloc.start()
    try:
        backend.put_file("packs/cd/pack", str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not path.exists()
    assert peak < 4 << 20, f"{peak} bytes held to upload 16 MiB: not streamed"
    assert backend.read("packs/cd/pack") == data


def test_list_pages_through_nested_folders(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = store.backend
    backend.ensure_bucket()
    backend.page_size = 7
    rng = random.Random(3)
    expected = []
    for i in range(20):
        name = f"packs/{rng.choice(['ab', 'cd', 'ef/deeper'])}/{i:02d}-{rng.getrandbits(64):x}"
        data = rng.randbytes(rng.randrange(0, 3000))
        backend.put(name, data)
        expected.append((name, len(data)))
    backend.put("index/not-a-pack", b"x")
    backend.put("packsandmore/not-a-pack", b"x")  # the prefix is the folder, not a string
    store.fs.pipe_file(f"{store.bucket}/elsewhere/packs/x", b"x")  # outside the repository
    pages = []
    real = backend._request

    def counted(*args: Any, **kwargs: Any) -> Any:
        pages.append(kwargs.get("query"))
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "_request", counted)
    assert backend.list("packs") == sorted(expected)
    assert len(pages) == 3 and all(q and q["max-keys"] == "7" for q in pages)
    assert "continuation-token" in pages[1] and "continuation-token" in pages[2]
    assert backend.list("packs/ef") == sorted(e for e in expected if e[0].startswith("packs/ef/"))
    assert backend.list("index") == [("index/not-a-pack", 1)]
    assert backend.list("condemned") == []


def test_exists_delete_and_mtime(store: Store) -> None:
    backend = store.backend
    backend.ensure_bucket()
    assert not backend.exists("sessions/one")
    backend.put("sessions/one", b"alive")
    assert backend.exists("sessions/one")
    assert abs(backend.mtime("sessions/one") - time.time()) < 120
    backend.delete("sessions/one")
    assert not backend.exists("sessions/one")
    backend.delete("sessions/one")  # gone already: fine
    with pytest.raises(RepositoryError, match="sessions/one is missing"):
        backend.mtime("sessions/one")


def test_reading_a_missing_name_names_it(store: Store) -> None:
    store.backend.ensure_bucket()
    with pytest.raises(RepositoryError) as failed:
        store.backend.read("index/feedface", 0, 100)
    assert str(failed.value) == (
        f"index/feedface is missing from the repository s3://{store.bucket}/repo."
    )


def test_a_wrong_secret_is_refused_without_showing_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.backend.ensure_bucket()
    secret = "Wr0ngSecretThatMustNotShow"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    wrong = s3_backend(f"s3://{store.bucket}/repo")
    assert wrong is not None
    try:
        started = time.monotonic()
        with pytest.raises(RepositoryError) as failed:
            wrong.put("repository.json", b"{}")
        assert time.monotonic() - started < 5  # a refusal is not retried
        with pytest.raises(RepositoryError) as reaching:
            wrong.exists("repository.json")
    finally:
        wrong.close()
    message = str(failed.value)
    assert message.startswith(f"Writing to s3://{store.bucket}/repo failed: ")
    assert "SignatureDoesNotMatch" in message or "AccessDenied" in message
    assert "\n" not in message and "Traceback" not in message
    for error in (failed.value, reaching.value):
        assert secret not in f"{error} {error.hint} {error!r}"
        assert error.hint and "CARGOHOLD_S3_ENDPOINT" in error.hint


def test_eight_threads_at_once(store: Store, tmp_path: Path) -> None:
    backend = store.backend
    backend.ensure_bucket()

    def work(worker: int) -> list[tuple[str, int]]:
        rng = random.Random(worker)
        written = []
        for i in range(6):
            name = f"packs/{worker:02x}/{i}-{rng.getrandbits(32):x}"
            data = rng.randbytes(rng.randrange(1, 300_000))
            if i % 2:
                path = backend.temp_file(f"w{worker}")
                Path(path).write_bytes(data)
                backend.put_file(name, path)
            else:
                backend.put(name, data)
            assert backend.read(name) == data
            offset = rng.randrange(len(data))
            length = rng.randrange(len(data) - offset + 1)
            assert backend.read(name, offset, length) == data[offset : offset + length]
            written.append((name, len(data)))
        return written

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert backend.list("packs") == sorted(item for written in results for item in written)
    assert len(backend._connections) <= 9  # one per thread that sent a request


class CuttingProxy:
    """Forwards TCP connections to the S3 server, except the first: that one is reset (RST,
    no answer) once the whole request has arrived -- the server never saw it."""

    def __init__(self, endpoint: str) -> None:
        parts = urllib.parse.urlsplit(endpoint)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted = 0
        self.cut_after = 0  # bytes of the request read before the cut
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(30)
            self.accepted += 1
            self._start(self._cut if self.accepted == 1 else self._forward, client)

    def _cut(self, client: socket.socket) -> None:
        with client:
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data and (chunk := client.recv(1 << 16)):
                    data += chunk
                head = data.split(b"\r\n\r\n", 1)[0].lower()
                size = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ),
                    0,
                )
                while len(data) < len(head) + 4 + size and (chunk := client.recv(1 << 16)):
                    data += chunk
            self.cut_after = len(data)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _forward(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.target, timeout=30) as upstream:
            back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
            back.start()
            self._pipe(client, upstream)
            back.join(60)

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
        self.listener.close()


def test_an_upload_cut_off_by_the_server_is_retried(store: Store, tmp_path: Path) -> None:
    store.backend.ensure_bucket()
    proxy = CuttingProxy(store.endpoint["CARGOHOLD_S3_ENDPOINT"])
    through = S3Backend(
        store.backend.url,
        store.backend.credentials,
        endpoint=proxy.endpoint,
        region=store.backend.region,
    )
    data = random.Random(4).randbytes(3 << 20)
    path = tmp_path / "pack"
    path.write_bytes(data)
    try:
        through.put_file("packs/ab/cut", str(path))
        assert not path.exists()
    finally:
        through.close()
        proxy.close()
    assert proxy.cut_after > 3 << 20  # the whole request was sent, then the connection reset
    assert proxy.accepted == 2
    assert store.backend.read("packs/ab/cut") == data
