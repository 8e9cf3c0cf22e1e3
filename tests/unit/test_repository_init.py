"""Creating a local repository while another process creates the same one (two first
snapshots at once): the config the other published between our checks is not a stranger's
file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_a_config_published_between_our_checks_is_the_same_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cargohold.snapshots import repository as r

    root = tmp_path / "repo"
    real_exists = Path.exists
    raced = []

    def exists(self: Path, *args: object, **kwargs: object) -> bool:
        if self == root / r.CONFIG and not raced:
            raced.append(True)
            r.init_repository(str(root))  # the other process finishes creating it right now
            return False  # ... after we had looked
        return real_exists(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "exists", exists)
    repo = r.init_repository(str(root), exist_ok=True)
    assert raced
    assert repo.config.id == json.loads((root / r.CONFIG).read_text())["id"]


def test_a_folder_with_someone_elses_files_is_still_refused(tmp_path: Path) -> None:
    from cargohold.snapshots import RepositoryError, init_repository

    root = tmp_path / "repo"
    root.mkdir()
    (root / "thesis.pdf").write_bytes(b"%PDF")
    with pytest.raises(RepositoryError, match="not a cargohold repository"):
        init_repository(str(root), exist_ok=True)
