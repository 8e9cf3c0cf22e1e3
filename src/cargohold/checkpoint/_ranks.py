"""Many ranks, one checkpoint: who am I, and how the ranks agree.

A distributed job (``torchrun``, Slurm, MPI) runs one process per rank, all saving into the same
folder. The protocol, for the k-th save of a session (every rank calls ``save`` in the same order):

1. every rank writes its own files into ``.pending-<session>-<k>-step-N/`` (a file name taken by
   another rank is an error at once: files are created with ``O_EXCL``), fsyncs them, and then
   writes ``.rank-<r>.json`` -- its files, sizes, checksums -- atomically: "my part is durable";
2. rank 0 waits until every rank's record is there, merges them into ``manifest.json`` and
   publishes the folder as ``step-N/`` with one rename: one commit, after every rank is durable;
3. rank 0 tells every rank the outcome; a rank that died (its liveness lock is free) or did not
   answer within ``timeout`` makes the save fail on every rank, naming the missing ranks, and
   nothing is committed. The pending folder is debris of a dead session: the next start
   removes it.

Agreement goes through one of two ``Coordinator``s. ``FileCoordinator`` needs nothing but the
shared folder and the standard library: rank 0 opens a *session* (a random token, a folder
``.session-<token>/`` and a liveness lock ``.lock-<token>`` it holds while it lives) and
publishes it in ``.session.json``; the other ranks join the session whose lock is alive, so a
pointer left by a dead run is never followed. Broadcasts are small JSON files in the session
folder. ``TorchCoordinator`` is used when a ``torch.distributed`` process group is initialised:
broadcasts and barriers are collectives on two private gloo groups (one for the saves, which may
run in a background thread, one for the training loop's preemption check), so they are fast and
fail with the job instead of at a timeout; the files stay the same. With either, every rank holds
a liveness lock ``rank-<r>.lock`` in the session folder: when a collective fails or a record
does not come, the lock that is free names the rank that died (a rank that ended cleanly
removed its lock file: it is not taken for dead).

Which shared folders qualify. Not any shared file system: the protocol needs POSIX record locks
(``fcntl``) that every rank's process sees and that the lock manager drops when their holder
dies, an atomic ``rename`` within a folder (the commit), hard links (``os.link``: the first
stop proposal wins) and a file renamed into place being seen whole by the other ranks. One node:
any local file system (ext4, xfs, btrfs, tmpfs, a Docker volume or bind mount). Many nodes:
NFSv4 (or NFSv3 with its lock manager; never a mount with ``nolock`` or ``local_lock``), Lustre
mounted with ``-o flock`` (not ``localflock``), IBM Storage Scale (GPFS), CephFS. On NFS a
rank that dies with its whole node is seen dead only when the server's lease for that node
expires (90 s by default); until then the others wait for it as for a hanging rank. Object
store mounts (s3fs, gcsfuse, mountpoint-s3) have no locks and no hard links: they do not
qualify (use ``cargohold run``'s mirror to copy committed checkpoints to object storage).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from cargohold.checkpoint._atomic import fsync_dir
from cargohold.checkpoint._locks import LivenessLock, is_alive, is_dead, lock_path
from cargohold.errors import CheckpointError

__all__ = [
    "PENDING_PREFIX",
    "SESSION_POINTER",
    "SESSION_PREFIX",
    "Coordinator",
    "FileCoordinator",
    "Ranks",
    "TorchCoordinator",
    "dead_ranks",
    "detect_ranks",
    "make_coordinator",
    "missing_ranks",
    "rank_lock",
    "rank_record_name",
    "read_json",
    "write_json_atomically",
]

SESSION_POINTER = ".session.json"
SESSION_PREFIX = ".session-"
PENDING_PREFIX = ".pending-"
_POLL = 0.02  # seconds between two looks at the shared folder
_GRACE = 2.0  # seconds a failed collective waits for the dead rank's lock to be free

# (rank, world size, local rank) variables, in the order launchers are tried.
_LAUNCHERS = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),  # torchrun, torch.multiprocessing users, accelerate
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),  # MPICH, Intel MPI
)


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int


def _torch_dist() -> Any | None:
    """``torch.distributed`` when the program already imported it and initialised a group."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def detect_ranks(
    rank: int | None, world_size: int | None, environ: Mapping[str, str] | None = None
) -> Ranks:
    """This process's rank: explicit, else the process group, else the launcher's environment.

    Raises:
        CheckpointError: the values are not integers or the rank is outside the world.
    """
    env = os.environ if environ is None else environ
    local: int | None = None
    source = "the arguments"
    if rank is None and world_size is None:
        dist = _torch_dist()
        if dist is not None:
            rank, world_size, source = dist.get_rank(), dist.get_world_size(), "torch.distributed"
        else:
            for rank_var, size_var, local_var in _LAUNCHERS:
                if rank_var in env and size_var in env:
                    source = f"${rank_var}/${size_var}"
                    try:
                        rank, world_size = int(env[rank_var]), int(env[size_var])
                        local = int(env.get(local_var, rank))
                    except ValueError:
                        raise CheckpointError(
                            f"{source} are not integers: {env[rank_var]!r}/{env[size_var]!r}.",
                            hint="Start the job with torchrun, srun or mpirun, or pass "
                            "rank= and world_size= to CheckpointManager.",
                        ) from None
                    break
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if not (isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size):
        raise CheckpointError(
            f"Rank {rank!r} of world size {world_size!r} (from {source}) is not a valid rank.",
            hint="A rank is 0 <= rank < world_size.",
        )
    return Ranks(rank, world_size, rank if local is None else local)


def rank_record_name(rank: int) -> str:
    return f".rank-{rank:05d}.json"


def write_json_atomically(path: Path, value: object) -> None:
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError):
        return None  # torn by a dead writer: as good as absent


def missing_ranks(pending: Path, world_size: int) -> list[int]:
    """Ranks whose durable record is not in ``pending``."""
    return [r for r in range(world_size) if not (pending / rank_record_name(r)).exists()]


def rank_lock(session_folder: Path, rank: int) -> Path:
    """The liveness lock a rank holds in its session's folder while it lives."""
    return session_folder / f"rank-{rank:05d}.lock"


def dead_ranks(session_folder: Path, ranks: range | list[int], me: int) -> list[int]:
    """Those of ``ranks`` (not ``me``: a process never probes its own lock) whose lock is free
    though its file is there: they died without ending their session."""
    return [r for r in ranks if r != me and is_dead(rank_lock(session_folder, r))]


def _named(ranks: list[int]) -> str:
    return ", ".join(f"rank {r}" for r in ranks)


class Coordinator(Protocol):
    rank: int
    world_size: int
    session: str

    def broadcast(self, key: str, value: object) -> Any:
        """Rank 0's ``value`` on every rank (JSON-able)."""

    def all_durable(self, pending: Path, ok: bool, timeout: float) -> None:
        """Return on rank 0 when every rank's record is in ``pending`` (others may return at once).

        Raises:
            CheckpointError: naming the ranks that died or did not answer within ``timeout``.
        """

    def any_preempted(self, local: bool) -> bool:
        """True on every rank, at the same call, once any rank is preempted."""

    def preempted_now(self) -> None:
        """Called from the SIGTERM handler."""

    def close(self) -> None: ...


def _timeout_error(what: str, ranks: list[int], timeout: float, dead: list[int]) -> CheckpointError:
    names = ", ".join(str(r) for r in ranks)
    died = f" ({_named(dead)} died)" if dead else ""
    return CheckpointError(
        f"{what}: rank {names} did not finish within {timeout:.0f} s{died}. Nothing was committed.",
        hint="A rank died or hangs; restart all ranks: the next start removes the pending folder "
        "and every rank resumes from the last committed checkpoint. Every rank must create its "
        "CheckpointManager and save; to save from rank 0 alone, pass rank=0, world_size=1.",
    )


class FileCoordinator:
    """Agreement through the shared folder alone (see the module docstring)."""

    def __init__(self, directory: Path, ranks: Ranks, timeout: float) -> None:
        self.directory = directory
        self.rank = ranks.rank
        self.world_size = ranks.world_size
        self.timeout = timeout
        self._leader: LivenessLock | None = None
        if self.rank == 0:
            self.session, self._leader = open_session(directory, self.world_size)
            write_json_atomically(
                directory / SESSION_POINTER,
                {"session": self.session, "world_size": self.world_size},
            )
        else:
            self.session = self._join()
        self.folder = directory / f"{SESSION_PREFIX}{self.session}"
        self._me = LivenessLock(self._rank_lock(self.rank), wait=5.0)
        # Rank 0 may not end the session before every rank has joined it (see close); a rank's
        # liveness lock goes when it closes, so joining leaves a mark that stays.
        self._everyone_joined = self.world_size == 1
        if self.rank != 0:
            with contextlib.suppress(OSError):
                (self.folder / _joined_name(self.rank)).touch()
        self._stop_calls = 0
        self._stop_proposed = False
        self._written: list[Path] = []

    def _rank_lock(self, rank: int) -> Path:
        return rank_lock(self.folder, rank)

    def _join(self) -> str:
        deadline = time.monotonic() + self.timeout
        while True:
            pointer = read_json(self.directory / SESSION_POINTER)
            if isinstance(pointer, dict) and isinstance(pointer.get("session"), str):
                token = pointer["session"]
                if (
                    token.isalnum()
                    and pointer.get("world_size") == self.world_size
                    and is_alive(lock_path(self.directory, token))
                ):
                    return str(token)
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"Rank {self.rank}: rank 0 opened no checkpoint session in {self.directory} "
                    f"within {self.timeout:.0f} s.",
                    hint="Every rank must create its CheckpointManager on the same shared "
                    "folder with the same world size; is rank 0 running?",
                )
            time.sleep(_POLL)

    def _dead_ranks(self) -> list[int]:
        """Ranks of this session whose liveness lock is free: rank 0 is gone, and a rank it
        was waiting for may be the reason (the error names the cause, not only the messenger)."""
        return dead_ranks(self.folder, range(self.world_size), self.rank)

    def _leader_alive(self) -> bool:
        return is_alive(lock_path(self.directory, self.session))

    def broadcast(self, key: str, value: object) -> Any:
        path = self.folder / f"{key}.json"
        if self.rank == 0:
            write_json_atomically(path, {"value": value})
            if key.startswith("outcome-"):
                # Every rank recorded its part of this save, so each has read all earlier
                # answers: they can go (a long run would pile up one file per save).
                for old in self._written:
                    with contextlib.suppress(OSError):
                        old.unlink()
                self._written.clear()
            self._written.append(path)
            return value
        # Rank 0 itself may wait up to `timeout` for the others before it answers.
        patience = 2 * self.timeout + 5
        deadline = time.monotonic() + patience
        while True:
            found = read_json(path)
            if isinstance(found, dict) and "value" in found:
                return found["value"]
            if not self._stop_proposed and (self.folder / "stop").exists():
                # Another rank was preempted and may wait for us at its next check.
                self.preempted_now()
            if not self._leader_alive() or time.monotonic() > deadline:
                raise _timeout_error(
                    f"Waiting for rank 0 ({key})",
                    [0],
                    self.timeout,
                    self._dead_ranks() if not self._leader_alive() else [],
                )
            time.sleep(_POLL)

    def all_durable(self, pending: Path, ok: bool, timeout: float) -> None:
        if self.rank != 0 or not ok:
            return  # rank 0 failed itself: nothing to wait for
        deadline = time.monotonic() + timeout
        while True:
            missing = missing_ranks(pending, self.world_size)
            if not missing:
                self._everyone_joined = True
                return
            dead = dead_ranks(self.folder, missing, self.rank)
            if dead or time.monotonic() > deadline:
                raise _timeout_error(f"Checkpoint {pending.name}", missing, timeout, dead)
            time.sleep(_POLL)

    def any_preempted(self, local: bool) -> bool:
        """Every rank counts its calls. A preempted rank proposes to stop at its next call (from
        the signal handler, so that a rank blocked in a save still proposes), the others join
        as soon as they see a proposal, and all stop at the largest one."""
        self._stop_calls += 1
        if not self._stop_proposed:
            if not local and not (self.folder / "stop").exists():
                return False
            self._propose(self._stop_calls)
        deadline = time.monotonic() + self.timeout
        while True:
            proposals = [
                read_json(self.folder / f"stop-{r:05d}.json") for r in range(self.world_size)
            ]
            known = [p for p in proposals if isinstance(p, int)]
            if known and self._stop_calls < max(known):
                return False  # all ranks stop at a later call: keep training until then
            if len(known) == self.world_size:
                return self._stop_calls == max(known)
            if time.monotonic() > deadline:
                missing = [r for r, p in enumerate(proposals) if not isinstance(p, int)]
                raise _timeout_error("Agreeing on the final step", missing, self.timeout, [])
            time.sleep(_POLL)

    def preempted_now(self) -> None:
        self._propose(self._stop_calls + 1)

    def _propose(self, call: int) -> None:
        """Write this rank's proposal once: the first one wins and never changes (a signal
        handler may run in the middle of any_preempted)."""
        if self._stop_proposed:
            return
        self._stop_proposed = True
        path = self.folder / f"stop-{self.rank:05d}.json"
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps(call))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
        (self.folder / "stop").touch()

    def close(self) -> None:
        if self._leader is not None and not self._everyone_joined:
            self._wait_for_joins()
        self._me.release()
        if self._leader is not None:
            self._leader.release()

    def _wait_for_joins(self) -> None:
        """Keep the session alive until every rank has joined it (at most ``timeout``).

        A short run (restore, then close without a save) would otherwise end the session before
        a slower rank found it, and that rank would wait for a session that no longer lives.
        Once a save has gathered every rank's record, they have all joined: no wait.
        """
        deadline = time.monotonic() + self.timeout
        waiting = {_joined_name(r) for r in range(1, self.world_size)}
        while waiting and time.monotonic() < deadline:
            waiting = {name for name in waiting if not (self.folder / name).exists()}
            if waiting:
                time.sleep(_POLL)


def _joined_name(rank: int) -> str:
    return f"joined-{rank:05d}"


def open_session(directory: Path, world_size: int) -> tuple[str, LivenessLock]:
    """A fresh session token, its folder, and the lock that says it is alive."""
    token = secrets.token_hex(8)
    leader = LivenessLock(lock_path(directory, token))
    (directory / f"{SESSION_PREFIX}{token}").mkdir()
    fsync_dir(directory)
    return token, leader


class TorchCoordinator:
    """Agreement through ``torch.distributed`` collectives on private gloo groups.

    A collective fails (gloo: "Connection closed by peer") when a peer died; which one, the
    collective does not say. Every rank holds its liveness lock in the session folder, so the
    error names the rank whose lock is free (see ``_failure``).
    """

    def __init__(self, directory: Path, dist: Any, timeout: float) -> None:
        self.rank = int(dist.get_rank())
        self.world_size = int(dist.get_world_size())
        self.timeout = timeout
        self._dist = dist
        self._probe = False  # every rank's lock exists: a free one means a dead rank
        self._broken: str | None = None  # why a collective failed: the group is unusable
        wait = timedelta(seconds=timeout)

        def groups() -> tuple[Any, Any]:
            # Saves may run in a background thread while the loop checks for preemption: each
            # has its own group, so their collectives never interleave.
            return (
                dist.new_group(backend="gloo", timeout=wait),
                dist.new_group(backend="gloo", timeout=wait),
            )

        self.save_group, self._loop = self._collective(groups, "creating its gloo groups")
        self._leader: LivenessLock | None = None
        token = None
        if self.rank == 0:
            token, self._leader = open_session(directory, self.world_size)
        self.session = str(self._collective(lambda: self._bcast(token), "opening the session"))
        self.folder = directory / f"{SESSION_PREFIX}{self.session}"
        self._me: LivenessLock | None = self._take_rank_lock(directory)
        self._collective(
            lambda: dist.barrier(group=self.save_group), "taking every rank's liveness lock"
        )
        self._probe = True

    def _take_rank_lock(self, directory: Path) -> LivenessLock:
        """This rank's liveness lock in the session folder rank 0 just made (on a network file
        system another node may not see that folder at once: it is looked for a while).

        Raises:
            OSError: the lock cannot be taken.
        """
        deadline = time.monotonic() + min(self.timeout, 30.0)
        while True:
            try:
                return LivenessLock(rank_lock(self.folder, self.rank), wait=5.0)
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise
                with contextlib.suppress(OSError):
                    os.listdir(directory)  # revalidates an NFS client's cached listing
                time.sleep(_POLL)

    @property
    def broken(self) -> str | None:
        """Why the process group failed, if it did: no collective can run on it since."""
        return self._broken

    def _bcast(self, value: object) -> Any:
        box = [value]
        self._dist.broadcast_object_list(box, src=0, group=self.save_group)
        return box[0]

    def _collective(
        self, call: Callable[[], Any], what: str, pending: Path | None = None, after: str = ""
    ) -> Any:
        if self._broken is not None:  # a collective on a broken group may hang: none is tried
            raise CheckpointError(
                f"Rank {self.rank}: no {what}: the process group broke earlier. {self._broken}",
                hint="Restart all ranks: every rank resumes from the last committed checkpoint.",
            )
        try:
            return call()
        except Exception as exc:  # gloo raises RuntimeError subclasses when a peer is gone
            error = self._failure(what, exc, pending, after)
            self._broken = error.message
            raise error from exc

    def _failure(
        self, what: str, exc: Exception, pending: Path | None, after: str
    ) -> CheckpointError:
        """The error of a failed collective, naming the ranks that died when their locks say so.

        A dead process's socket and lock go at its exit, one after the other: the locks are
        probed for a moment (``_GRACE``) before the error says only that a peer is gone.
        """
        dead: list[int] = []
        if self._probe:
            deadline = time.monotonic() + min(_GRACE, self.timeout)
            while not (dead := dead_ranks(self.folder, range(self.world_size), self.rank)):
                if time.monotonic() >= deadline:
                    break
                time.sleep(_POLL)
        if self._me is not None and self._probe:
            # A failed collective leaves the group broken for good: this rank is out of the
            # session, alive. Its lock goes with its file, so that a rank that learns of the
            # failure only when this one exits names the rank that died, not this messenger.
            self._me.release()
            self._me = None
        tail = f" {after}" if after else ""
        if dead:
            message = f"Rank {self.rank}: {_named(dead)} died while {what}.{tail}"
        else:
            missing = (
                [r for r in missing_ranks(pending, self.world_size) if r != self.rank]
                if pending is not None
                else []
            )
            parts = f"; no durable part yet from {_named(missing)}" if missing else ""
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            message = (
                f"Rank {self.rank}: a peer rank died or stopped answering while {what}{parts} "
                f"(torch.distributed: {first}).{tail}"
            )
        return CheckpointError(
            message,
            hint="A rank died or hangs; restart all ranks: every rank resumes from the last "
            "committed checkpoint, and the next start removes the pending folder.",
        )

    def broadcast(self, key: str, value: object) -> Any:
        after = ""
        if key.startswith("outcome-") and self.rank != 0:
            after = (
                "Rank 0 may have committed the checkpoint before that: after a restart all "
                "ranks resume from the newest whole one."
            )
        return self._collective(lambda: self._bcast(value), f"agreeing on {key}", after=after)

    def all_durable(self, pending: Path, ok: bool, timeout: float) -> None:
        box: list[object] = [None] * self.world_size

        def gather() -> None:
            self._dist.all_gather_object(box, ok, group=self.save_group)

        self._collective(
            gather,
            f"waiting for every rank's part of {pending.name}",
            pending,
            after="Nothing was committed.",
        )

    def any_preempted(self, local: bool) -> bool:
        import torch

        flag = torch.tensor([1 if local else 0], dtype=torch.int32)

        def reduce() -> None:
            self._dist.all_reduce(flag, op=self._dist.ReduceOp.MAX, group=self._loop)

        self._collective(reduce, "agreeing on preemption")
        return bool(flag.item())

    def preempted_now(self) -> None:
        pass  # the flag travels with the next all_reduce

    def close(self) -> None:
        if self._me is not None:
            self._me.release()
            self._me = None
        if self._leader is not None:
            self._leader.release()


def make_coordinator(directory: Path, ranks: Ranks, timeout: float) -> Coordinator:
    dist = _torch_dist()
    if dist is not None and dist.get_world_size() == ranks.world_size:
        return TorchCoordinator(directory, dist, timeout)
    return FileCoordinator(directory, ranks, timeout)
