"""Builders and comparators for file trees used by transfer tests."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path


def make_awkward_tree(root: Path) -> Path:
    """A tree with everything that breaks naive copies: unicode, spaces and newlines in names,
    empty folders, relative and dangling symlinks, hardlinks, exec bits, foreign owners, old
    mtimes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "données d'entraînement").mkdir()
    (root / "données d'entraînement" / "line\nbreak.txt").write_text("newline in the name\n")
    (root / "données d'entraînement" / "spaced name.csv").write_text("a,b\n1,2\n")
    (root / "empty folder" / "nested empty").mkdir(parents=True)
    (root / "models").mkdir()
    weights = root / "models" / "model.bin"
    weights.write_bytes(os.urandom(300_000))
    os.link(weights, root / "models" / "model-hardlink.bin")
    os.symlink("models/model.bin", root / "latest")
    os.symlink("../../does/not/exist", root / "dangling")
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o755)
    foreign = root / "foreign.txt"
    foreign.write_text("owned by someone else\n")
    if os.geteuid() == 0:
        os.chown(foreign, 4321, 8765)
        os.lchown(root / "dangling", 777, 888)
    os.utime(foreign, ns=(946_684_800_123_456_789, 946_684_800_123_456_789))  # 2000-01-01
    os.utime(root / "empty folder" / "nested empty", ns=(1_000_000_000_000_000_000,) * 2)
    os.utime(root / "empty folder", ns=(1_100_000_000_000_000_000,) * 2)
    return root


def listing(root: Path, *, mtime_resolution_ns: int = 1) -> list[tuple[object, ...]]:
    """Every entry: path, type, mode, owner, mtime, size, content hash, link target, and which
    entries share an inode (hardlinks)."""
    rows: list[tuple[object, ...]] = []
    inodes: dict[tuple[int, int], str] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted([*dirs, *files]) + ([""] if folder == str(root) else []):
            path = os.path.join(folder, name) if name else folder
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = "l" if os.path.islink(path) else "d" if os.path.isdir(path) else "f"
            digest = target = link_group = ""
            if kind == "f":
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                link_group = inodes.setdefault((st.st_dev, st.st_ino), rel)
            elif kind == "l":
                target = os.readlink(path)
            mtime = st.st_mtime_ns // mtime_resolution_ns
            rows.append((rel, kind, oct(st.st_mode & 0o7777) if kind != "l" else "",
                         st.st_uid, st.st_gid, mtime, st.st_size if kind == "f" else 0,
                         digest, target, link_group))
    return sorted(rows, key=lambda r: str(r[0]))


def tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


HOSTILE: dict[str, list[tuple[tarfile.TarInfo, bytes | None]]] = {
    "absolute": [(member("/tmp/cargohold-escape-abs"), b"x")],
    "dotdot": [(member("ok.txt"), b"fine"), (member("../cargohold-escape-dotdot"), b"x")],
    "through-symlink": [(member("link", tarfile.SYMTYPE, "/tmp"), None),
                        (member("link/cargohold-escape-sym"), b"x")],
    "hardlink-outside": [(member("hl", tarfile.LNKTYPE, "../../etc/passwd"), None)],
    "device": [(member("dev", tarfile.CHRTYPE), None)],
}
