"""A TCP port carried between network namespaces through a unix socket (tests only).

The S3 server the tests start listens on the host's loopback; a private engine's network
namespace has its own loopback. Unix sockets live in the file system, which every namespace
shares, so two forwarders join them without giving the host any new address:

    host:   python3 tests/forward.py unix:/tmp/x.sock tcp:127.0.0.1:47480
    netns:  nsenter --net=/var/run/netns/N \\
                python3 tests/forward.py tcp:127.0.0.1:47480 unix:/tmp/x.sock

Usage: forward.py LISTEN CONNECT, each ``tcp:HOST:PORT`` or ``unix:PATH``. Runs until killed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


def _address(text: str) -> tuple[int, object]:
    kind, _, rest = text.partition(":")
    if kind == "unix":
        return socket.AF_UNIX, rest
    host, _, port = rest.rpartition(":")
    return socket.AF_INET, (host, int(port))


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, target: tuple[int, object]) -> None:
    with client, socket.socket(target[0], socket.SOCK_STREAM) as upstream:
        try:
            upstream.connect(target[1])  # type: ignore[arg-type]
        except OSError:
            return
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()


def main(listen: str, connect: str) -> None:
    family, where = _address(listen)
    target = _address(connect)
    server = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_UNIX:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(where))
    else:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(where)  # type: ignore[arg-type]
    server.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        client, _ = server.accept()
        threading.Thread(target=_serve, args=(client, target), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
