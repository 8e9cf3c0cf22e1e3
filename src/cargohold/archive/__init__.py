"""Trees of files as streams of entries -- pure: the standard library and cargohold's errors,
nothing that knows about Docker.

Every way data moves (ingest, export, clone, snapshot, restore, rescue) is a source feeding a
writer:

    FolderReader ─┐                   ┌─ TreeWriter   (a host folder: a local volume, a DEST)
    TarReader ────┼── (Entry, data) ──┼─ TarWriter    (an archive, or put_archive to the engine)
    snapshot  ────┘                   └─ snapshot

so the rules that keep a transfer safe live here only: ``clean_member_name`` judges names,
``TarReader`` judges member types, and the folder writer refuses to pass through anything it
did not create. Everything streams: a file's bytes go from reader to writer in 1 MiB chunks.
"""

from cargohold.archive._entries import (
    CHUNK,
    Entry,
    EntrySource,
    EntryStream,
    Foreign,
    Kind,
    Opener,
    Progress,
    Walked,
    data_stamp,
    no_progress,
)
from cargohold.archive._fs import syncfs
from cargohold.archive._names import clean_member_name
from cargohold.archive.folder import FolderReader, TreeWriter
from cargohold.archive.tar import TarReader, TarWriter, open_archive_for_reading

__all__ = [
    "CHUNK",
    "Entry",
    "EntrySource",
    "EntryStream",
    "FolderReader",
    "Foreign",
    "Kind",
    "Opener",
    "Progress",
    "TarReader",
    "TarWriter",
    "TreeWriter",
    "Walked",
    "clean_member_name",
    "data_stamp",
    "no_progress",
    "open_archive_for_reading",
    "syncfs",
]
