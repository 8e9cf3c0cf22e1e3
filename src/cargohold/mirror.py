"""The checkpoint mirror: every committed checkpoint of a store, pushed to a snapshot repository;
the newest one restored into an empty store on a node that has none.

Only a checkpoint known to be complete is pushed, never one being written. What marks a
checkpoint complete depends on who wrote it, one small registered function per writer:

* **cargohold** (``cargohold.checkpoint``): ``step-N/`` whose ``manifest.json`` -- written last,
  after every file is durable -- lists files that all exist with their sizes and checksums.
* **Hugging Face Trainer**: ``checkpoint-N/``. The Trainer writes no commit marker, so cargohold
  asks for ``trainer_state.json`` holding ``global_step == N`` (the Trainer writes it after the
  weights) *and* the folder to be settled: nothing in it changed for ``settle`` seconds, or a newer
  ``checkpoint-M/`` exists (the Trainer never goes back to an older folder).
* **Lightning**: ``*.ckpt`` files. ``torch.save`` writes a zip whose central directory comes last,
  so a ``.ckpt`` whose zip directory reads back whole, and that has not changed for ``settle``
  seconds, is complete. ``last.ckpt`` is rewritten in place: a changed one is pushed again.

Each checkpoint becomes one snapshot of its folder (a Lightning file is snapshotted alone), tagged
``mirror:<writer>:<step>:<name>``. The repository stores content once, so a new checkpoint costs
only what changed. A mirror that cannot be reached never stops the job: the mirror says so loudly,
every time it tries, and keeps trying; wrong credentials stop the mirror with a hint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cargohold._atomic import write_text_atomic
from cargohold.checkpoint._format import STEP_DIR_RE, check_folder
from cargohold.errors import CargoholdError, ChecksumMismatch, UsageError
from cargohold.kinds import looks_like_a_mistyped_url

if TYPE_CHECKING:
    from cargohold.snapshots import Repository

__all__ = [
    "MIRROR_ENV",
    "TAG_PREFIX",
    "Found",
    "Mirror",
    "MirrorAuthError",
    "MirrorStatus",
    "MirrorUnreachable",
    "committed_checkpoints",
    "others_alive",
    "supervise",
]

log = logging.getLogger(__name__)

MIRROR_ENV = "CARGOHOLD_MIRROR"
TAG_PREFIX = "mirror:"
STATUS_FORMAT = "cargohold-mirror-status"
_HF_DIR_RE = re.compile(r"^checkpoint-(\d+)$")
_LIGHTNING_STEP_RE = re.compile(r"step=(\d+)")
_TAG_RE = re.compile(r"^mirror:(cargohold|huggingface|lightning):(\d+):(.+)$")


class MirrorUnreachable(CargoholdError):
    """The mirror's repository cannot be reached now (network, DNS, server down)."""

    exit_code = 3


class MirrorAuthError(CargoholdError):
    """The repository refused the credentials."""

    exit_code = 2


@dataclass(frozen=True)
class Found:
    """One complete checkpoint in the store."""

    name: str
    step: int
    writer: str
    path: Path
    # Size and mtime of what was judged: a file rewritten in place (last.ckpt) differs.
    stamp: tuple[int, int]

    @property
    def tag(self) -> str:
        return f"{TAG_PREFIX}{self.writer}:{self.step}:{self.name}"


@dataclass(frozen=True)
class _Scan:
    """What every judge may consult: the time, the settle period, the store's other entries."""

    now: float
    settle: float
    siblings: tuple[str, ...]


_Judge = Callable[[os.DirEntry[str], _Scan], Found | None]
_WRITERS: list[_Judge] = []


def _writer(func: _Judge) -> _Judge:
    _WRITERS.append(func)
    return func


def _newest_mtime(folder: Path) -> tuple[int, int]:
    """(total bytes, newest mtime_ns) of a folder's files, not following links."""
    total = newest = 0
    for root, dirs, files in os.walk(folder):
        for name in files + dirs:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                newest = max(newest, st.st_mtime_ns)
                total += st.st_size if name in files else 0
    return total, newest


@_writer
def _cargohold(entry: os.DirEntry[str], scan: _Scan) -> Found | None:
    match = STEP_DIR_RE.fullmatch(entry.name)  # a trailing newline is not a step
    if not match or not entry.is_dir(follow_symlinks=False):
        return None
    try:
        check_folder(Path(entry.path), verify=True)
    except ValueError:
        return None
    return Found(entry.name, int(match.group(1)), "cargohold", Path(entry.path), (0, 0))


@_writer
def _huggingface(entry: os.DirEntry[str], scan: _Scan) -> Found | None:
    match = _HF_DIR_RE.fullmatch(entry.name)
    if not match or not entry.is_dir(follow_symlinks=False):
        return None
    step = int(match.group(1))
    try:
        state = json.loads((Path(entry.path) / "trainer_state.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(state, dict) or state.get("global_step") != step:
        return None
    newer = any(
        (m := _HF_DIR_RE.fullmatch(name)) is not None and int(m.group(1)) > step
        for name in scan.siblings
    )
    stamp = _newest_mtime(Path(entry.path))
    if not newer and scan.now - stamp[1] / 1e9 < scan.settle:
        return None
    return Found(entry.name, step, "huggingface", Path(entry.path), (0, 0))


@_writer
def _lightning(entry: os.DirEntry[str], scan: _Scan) -> Found | None:
    if not entry.name.endswith(".ckpt") or not entry.is_file(follow_symlinks=False):
        return None
    st = entry.stat(follow_symlinks=False)
    if scan.now - st.st_mtime_ns / 1e9 < scan.settle:
        return None
    try:
        with zipfile.ZipFile(entry.path) as archive:
            archive.infolist()
    except (OSError, zipfile.BadZipFile):
        return None
    match = _LIGHTNING_STEP_RE.search(entry.name)
    step = int(match.group(1)) if match else 0
    return Found(entry.name, step, "lightning", Path(entry.path), (st.st_size, st.st_mtime_ns))


def committed_checkpoints(
    directory: Path, *, settle: float = 30.0, now: float | None = None
) -> list[Found]:
    """Every complete checkpoint directly in ``directory``, oldest step first.

    Args:
        directory: the checkpoint store.
        settle: seconds without change after which a writer without a commit marker is done.
        now: the current time (tests).
    """
    try:
        entries = [e for e in os.scandir(directory) if not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    scan = _Scan(time.time() if now is None else now, settle, tuple(e.name for e in entries))
    found = []
    for entry in entries:
        for judge in _WRITERS:
            hit = judge(entry, scan)
            if hit is not None:
                found.append(hit)
                break
    return sorted(found, key=lambda f: (f.step, f.name))


@dataclass
class MirrorStatus:
    """What the mirror last did, for ``cargohold ps`` and the logs (persisted, versioned)."""

    state: str = "starting"  # starting | ok | unreachable | refused
    message: str = ""
    pushed: int = 0
    last_pushed: str | None = None
    restored: str | None = None
    updated: float = field(default_factory=time.time)
    format: str = STATUS_FORMAT
    version: int = 1

    @classmethod
    def read(cls, path: Path) -> MirrorStatus | None:
        """A status file, or None when it is missing or not one."""
        try:
            return cls.parse(path.read_bytes())
        except OSError:
            return None

    @classmethod
    def parse(cls, raw: bytes) -> MirrorStatus | None:
        """A status record from its JSON, or None when it is not one (wrong format or version)."""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("format") != STATUS_FORMAT:
            return None
        if data.get("version") != 1:
            return None
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError:
            return None


def _probe(url: str) -> None:
    """Reach the repository's location once, telling refused credentials from no answer.

    Raises:
        MirrorAuthError: the server answered and refused the credentials.
        MirrorUnreachable: nothing answered.
    """
    if "://" not in url or url.startswith("file://"):
        return
    from cargohold.snapshots.repository import fsspec_filesystem

    try:
        fs, path = fsspec_filesystem(url)
        bucket = path.split("/", 1)[0]
        fs.ls(bucket, refresh=True)
    except PermissionError as exc:
        detail = exc.strerror or (str(exc.args[0]) if exc.args and exc.args[0] else "access denied")
        raise MirrorAuthError(
            f"The mirror {url} refused the credentials ({detail}).",
            hint="Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in Kubernetes: the Secret the "
            "manifest names) to keys that may write that bucket.",
        ) from None
    except FileNotFoundError:
        return  # the bucket is missing: creating the repository will say so
    except Exception as exc:  # botocore/aiohttp errors have no common base
        text = str(exc)
        if any(word in text for word in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "403")):
            raise MirrorAuthError(
                f"The mirror {url} refused the credentials: {text}.",
                hint="Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to keys that may write it.",
            ) from None
        raise MirrorUnreachable(
            f"The mirror {url} cannot be reached: {text or type(exc).__name__}.",
            hint="Check the URL and CARGOHOLD_S3_ENDPOINT, and that the server is up. The job "
            "keeps running; nothing is mirrored until it answers.",
        ) from None


class Mirror:
    """Pushes a store's committed checkpoints to a repository; restores the newest one."""

    def __init__(
        self,
        directory: Path,
        url: str,
        *,
        settle: float = 30.0,
        status_file: Path | None = None,
        say: Callable[[str, bool], None] | None = None,
    ) -> None:
        if not url:
            raise UsageError(
                "No mirror URL.",
                hint=f'Set mirror = "s3://…" on the checkpoints store, or {MIRROR_ENV}.',
            )
        if looks_like_a_mistyped_url(url):
            raise UsageError(
                f"Mirror {url!r} is neither a URL nor a folder.",
                hint="Write scheme://… (e.g. s3://bucket/prefix), or a folder path.",
            )
        self.directory = directory
        self.url = url
        self.settle = settle
        self.status = MirrorStatus()
        self._status_file = status_file
        self._say = say or _log_event
        self._repo: Repository | None = None
        self._pushed: dict[str, tuple[int, int]] = {}  # tag → stamp of what was pushed
        self._listed = False

    # -- the repository -------------------------------------------------------------------

    def connect(self) -> None:
        """Reach the repository now (creating it when new).

        Raises:
            MirrorUnreachable, MirrorAuthError: it cannot be used.
        """
        self._repository()

    def _repository(self) -> Repository:
        if self._repo is None:
            _probe(self.url)
            from cargohold.snapshots import RepositoryError, open_repository

            try:
                self._repo = open_repository(self.url, create=True)
            except RepositoryError as exc:
                raise MirrorUnreachable(exc.message, hint=exc.hint) from None
        return self._repo

    def mirrored(self) -> dict[str, tuple[str, str]]:
        """tag → (snapshot id, created) of every mirrored checkpoint, the newest per tag."""
        from cargohold.snapshots import list_snapshots

        repo = self._repository()
        found: dict[str, tuple[str, str]] = {}
        for info in list_snapshots(repo):
            if info.tag and _TAG_RE.fullmatch(info.tag):
                found[info.tag] = (info.id, info.created)
        return found

    def _note(self, state: str, message: str) -> None:
        self.status.state = state
        self.status.message = message
        self.status.updated = time.time()
        if self._status_file is not None:
            with contextlib.suppress(OSError):
                write_text_atomic(self._status_file, json.dumps(asdict(self.status)))

    # -- pushing -----------------------------------------------------------------------------

    def push_new(self, *, settle: float | None = None) -> list[Found]:
        """Push every committed checkpoint not yet mirrored (or rewritten since).

        ``settle`` overrides the mirror's settle period (0 for the last push, once the writer
        has exited: its final checkpoint will not change any more and must not be left behind).

        Returns:
            What was pushed now.

        Raises:
            MirrorUnreachable, MirrorAuthError: the repository cannot be used.
        """
        from cargohold.snapshots import RepositoryError, snapshot_path

        repo = self._repository()
        if not self._listed:
            self._pushed = {tag: (0, 0) for tag in self.mirrored()}
            self._listed = True
        pushed = []
        # Newest first: when the mirror lags, the checkpoint a restart needs goes out first,
        # and older ones may be gone to the writer's retention before their turn.
        settled = self.settle if settle is None else settle
        for found in reversed(committed_checkpoints(self.directory, settle=settled)):
            if found.tag in self._pushed and self._pushed[found.tag] == found.stamp:
                continue
            try:
                with _as_folder(found) as folder:
                    info = snapshot_path(folder, repo, tag=found.tag)
            except RepositoryError as exc:
                raise MirrorUnreachable(exc.message, hint=exc.hint) from None
            except (CargoholdError, OSError):
                if os.path.lexists(found.path):
                    raise
                log.info("%s was removed (retention) before it was mirrored", found.name)
                continue
            if not os.path.lexists(found.path):
                # Removed while it was read: the snapshot may lack files. Restore checks a
                # cargohold checkpoint's manifest and skips such a copy.
                log.info("%s was removed while it was mirrored", found.name)
            self._pushed[found.tag] = found.stamp
            self.status.pushed += 1
            self.status.last_pushed = found.name
            self._say(f"mirrored {found.name} ({info.files} files) as snapshot {info.id}", False)
            pushed.append(found)
        self._note("ok", f"{self.status.pushed} checkpoint(s) mirrored to {self.url}")
        return pushed

    # -- restoring ---------------------------------------------------------------------------

    def restore_latest(self) -> Path | None:
        """When the store holds no complete checkpoint, restore the newest mirrored one.

        Returns:
            The restored checkpoint's path in the store, or None (the store had one, or the
            mirror has none).

        Raises:
            MirrorUnreachable, MirrorAuthError: the repository cannot be used.
        """
        if committed_checkpoints(self.directory, settle=0):
            return None
        mirrored = self.mirrored()
        if not mirrored:
            return None

        def order(tag: str) -> tuple[int, str]:
            match = _TAG_RE.fullmatch(tag)
            assert match is not None
            return int(match.group(2)), mirrored[tag][1]

        for tag in sorted(mirrored, key=order, reverse=True):
            target = self._restore_one(tag, mirrored[tag][0])
            if target is not None:
                break
        else:
            return None
        self._pushed[tag] = (0, 0)
        self.status.restored = target.name
        self._say(f"restored {target.name} from the mirror {self.url}", False)
        self._note("ok", f"restored {target.name} from {self.url}")
        return target

    def _restore_one(self, tag: str, snapshot_id: str) -> Path | None:
        """Restore one mirrored checkpoint; None (and nothing left behind) when it is not whole."""
        from cargohold.snapshots import restore_to_path

        match = _TAG_RE.fullmatch(tag)
        assert match is not None
        writer, name = match.group(1), match.group(3)
        if "/" in name or name.startswith(".") or not name.isprintable():
            log.warning("skipping mirrored checkpoint %r: not a plain name", name)
            return None
        repo = self._repository()
        target = self.directory / name
        if writer == "lightning":
            staging = Path(tempfile.mkdtemp(prefix=".cargohold-mirror-", dir=self.directory))
            try:
                restore_to_path(repo, snapshot_id, staging / "ckpt", force=True)
                os.replace(staging / "ckpt" / name, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return target
        try:
            restore_to_path(repo, snapshot_id, target)
        except ChecksumMismatch as exc:
            self._say(f"mirrored {name} is damaged ({exc.message}); trying an older one", True)
            return None
        if writer == "cargohold":
            try:
                check_folder(target, verify=True)
            except ValueError as exc:
                self._say(f"mirrored {name} is not whole ({exc}); trying an older one", True)
                shutil.rmtree(target, ignore_errors=True)
                return None
        return target

    # -- running ---------------------------------------------------------------------------

    def run(self, *, interval: float, stop: threading.Event) -> None:
        """Push until ``stop`` is set, then push once more, without waiting for the settle
        period (the writer has ended: a Trainer's or Lightning's final checkpoint, written
        seconds before, is pushed too). An unreachable mirror is said loudly and retried;
        refused credentials end the loop with ``MirrorAuthError``."""
        while True:
            last = stop.is_set()
            try:
                self.push_new(settle=0 if last else None)
            except MirrorUnreachable as exc:
                self._note("unreachable", exc.message)
                self._say(f"NOTHING IS MIRRORED: {exc.message} {exc.hint or ''}", True)
                self._repo = None  # reconnect next time
            except MirrorAuthError as exc:
                self._note("refused", exc.message)
                raise
            except (CargoholdError, OSError) as exc:
                # Anything else is said loudly and tried again: the job must keep running.
                text = exc.message if isinstance(exc, CargoholdError) else str(exc)
                self._note("failing", text)
                self._say(f"MIRRORING FAILED, will retry: {text}", True)
            if last:
                return
            stop.wait(interval)


def _log_event(text: str, loud: bool) -> None:
    log.log(logging.ERROR if loud else logging.INFO, "%s", text)


def supervise(
    mirror: Mirror,
    command: list[str],
    *,
    interval: float,
    say: Callable[[str, bool], None] = _log_event,
) -> int:
    """``cargohold mirror --exec``: restore into an empty store, run ``command`` with
    ``CARGOHOLD_RESUME_FROM`` set, mirror while it runs, push once more when it ends.

    Returns:
        The command's exit code (128 + signal when a signal ended it).

    Raises:
        MirrorAuthError: the repository refused the credentials (the command is not started).
        UsageError: the command cannot be started.
    """
    try:
        mirror.connect()  # refused credentials stop here, before the job starts
        mirror.restore_latest()
    except MirrorUnreachable as exc:
        say(f"NOTHING IS MIRRORED, nothing restored: {exc.message} {exc.hint or ''}", True)
    env = dict(os.environ)
    latest = [f for f in committed_checkpoints(mirror.directory, settle=0)]
    if latest and "CARGOHOLD_RESUME_FROM" not in env:
        env["CARGOHOLD_RESUME_FROM"] = str(latest[-1].path)
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        raise UsageError(
            f"Cannot start {command[0]}: {exc.strerror or exc}.",
            hint="Check the job's command and that the image has it.",
        ) from None

    def forward(signum: int, _: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop = threading.Event()
    failure: list[MirrorAuthError] = []

    def mirror_loop() -> None:
        try:
            mirror.run(interval=interval, stop=stop)
        except MirrorAuthError as exc:
            failure.append(exc)
            say(f"NOTHING MORE IS MIRRORED: {exc.message} {exc.hint or ''}", True)

    thread = threading.Thread(target=mirror_loop, name="cargohold-mirror", daemon=True)
    thread.start()
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.set()
        thread.join()
    return code if code >= 0 else 128 - code


# The argument every sidecar that waits for the job carries (``mirror``, ``snapshot --every``).
UNTIL_POD_DONE = "--until-pod-done"


def stop_when_pod_done(
    stop: threading.Event,
    on_unshared: Callable[[], None],
    *,
    grace: float = 300.0,
    poll: float = 1.0,
) -> threading.Thread:
    """Set ``stop`` once the pod's other processes have ended (``--until-pod-done``): after
    they were seen running and are gone, or when none showed up within ``grace`` seconds.
    ``on_unshared`` hears once that the process namespace is not shared (then ``stop`` is left
    to a signal). Runs in a daemon thread, returned started."""

    def watch() -> None:
        started, seen = time.monotonic(), False
        while not stop.is_set():
            alive = others_alive()
            if alive is None:
                on_unshared()
                return
            seen = seen or alive
            if not alive and (seen or time.monotonic() - started > grace):
                stop.set()
                return
            time.sleep(poll)

    thread = threading.Thread(target=watch, name="cargohold-pod-watch", daemon=True)
    thread.start()
    return thread


def others_alive(own: set[int] | None = None) -> bool | None:
    """In a pod sharing one process namespace: does any process besides the pause process
    (pid 1), this one and the other sidecars still run? None when the namespace is not shared
    (pid 1 is ours). Sidecars are skipped because two of them (mirror and snapshots) would each
    wait for the other, and the Job would never complete."""
    mine = own or {os.getpid()}
    if 1 in mine or _cmdline(1).startswith(("cargohold", "python")):
        return None
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            pid = int(entry.name)
            if pid == 1 or pid in mine or _state(pid) in ("Z", "X", ""):
                continue
            if UNTIL_POD_DONE in _cmdline(pid).split(" "):
                continue
            return True
    return False


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[0]


@contextlib.contextmanager
def _as_folder(found: Found) -> Iterator[Path]:
    """A folder holding the checkpoint: itself, or for a single file a staging folder with a
    link to it (a copy when the file system refuses links)."""
    if found.path.is_dir():
        yield found.path
        return
    staging = Path(tempfile.mkdtemp(prefix="cargohold-mirror-"))
    try:
        try:
            os.link(found.path, staging / found.name)
        except OSError:
            shutil.copy2(found.path, staging / found.name)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
