"""guard's decisions without a daemon: what in a container's layer counts as ML data, and what
watch makes of a container that cannot be inspected."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cargohold.engine import ContainerInfo, ContainerStop
from cargohold.errors import ContainerNotFound, EngineUnavailable
from cargohold.guard import IMAGE_FOLDER_MIN, classify, watch


@pytest.mark.parametrize(
    ("path", "category"),
    [
        ("/workspace/out/model.safetensors", "checkpoint"),
        ("/workspace/out/MODEL.PT", "checkpoint"),  # suffixes in any case
        ("/ckpt/epoch=3.ckpt", "checkpoint"),
        ("/out/checkpoint-500/trainer_state.json", "checkpoint"),  # inside checkpoint-N
        ("/out/checkpoint_12/rng_state.txt", "checkpoint"),
        ("/data/train.parquet", "dataset"),
        ("/data/shard-0001.tfrecord", "dataset"),
        ("/data/labels.csv", "dataset"),
        ("/workspace/train.log", "log"),
        ("/runs/exp1/events.out.tfevents.1700000000.host", "log"),
        ("/workspace/logs/step.txt", "log"),
        ("/workspace/notes.txt", "other"),
        ("/workspace/pytorch_model.bin", "other"),  # a .bin alone is not known to be weights
    ],
)
def test_categories(path: str, category: str) -> None:
    assert classify([path])[path][0] == category


def test_a_checkpoint_named_folder_is_only_a_parent_not_the_file_itself() -> None:
    assert classify(["/out/checkpoint-500"])["/out/checkpoint-500"][0] == "other"


def test_bin_beside_a_config_json_is_weights() -> None:
    paths = ["/out/hf/config.json", "/out/hf/pytorch_model.bin", "/elsewhere/pytorch_model.bin"]
    found = classify(paths)
    assert found["/out/hf/pytorch_model.bin"] == ("checkpoint",
                                                  "weights (.bin beside a config.json)")
    assert found["/elsewhere/pytorch_model.bin"][0] == "other"


def test_many_images_in_one_folder_make_a_dataset_few_do_not() -> None:
    many = [f"/data/imgs/{i:05d}.png" for i in range(IMAGE_FOLDER_MIN)]
    few = [f"/tmp/plots/{i}.png" for i in range(IMAGE_FOLDER_MIN - 1)]
    found = classify(many + few)
    assert {found[p][0] for p in many} == {"dataset"}
    assert str(IMAGE_FOLDER_MIN) in found[many[0]][1]
    assert {found[p][0] for p in few} == {"other"}


def test_every_path_gets_exactly_one_answer() -> None:
    paths = ["/a.pt", "/b.csv", "/c.log", "/d", "/e/[/]weird.pt", "/f/ü.parquet"]
    assert set(classify(paths)) == set(paths)
    assert classify([]) == {}


class _StoppingEngine:
    """Just enough of an engine for watch(): one container stops, then inspecting it fails."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def container_stops(self, until: float | None = None) -> Iterator[ContainerStop]:
        yield ContainerStop("abc123", "trainer")

    def inspect_container(self, name: str) -> ContainerInfo:
        raise self.failure


def test_watch_reports_a_removed_container_and_goes_on() -> None:
    said: list[str] = []
    engine = _StoppingEngine(ContainerNotFound("No container abc123.", hint="h"))
    assert list(watch(engine, on_event=said.append)) == []  # type: ignore[arg-type]
    assert said and "trainer stopped and is already gone" in said[0]


def test_watch_does_not_read_a_dead_engine_as_a_removed_container() -> None:
    said: list[str] = []
    engine = _StoppingEngine(EngineUnavailable("cannot reach the Docker engine", hint="h"))
    with pytest.raises(EngineUnavailable):
        list(watch(engine, on_event=said.append))  # type: ignore[arg-type]
    assert said == []


# The one removal rule behind `prune` and `volume rm` (inventory.removal_decision): every branch
# that needs no volume contents, with an engine that fails the test if it is touched.


class _Untouchable:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the rule asked the engine for {name}")


def _summary(**changes: object) -> object:
    from dataclasses import replace

    from cargohold.inventory import VolumeSummary

    base = VolumeSummary(
        name="v", project="p", store="data", kind="dataset", bytes=10, files=1, used_by=[],
        protected=False, last_snapshot="abc123", snapshot_current=True, access="local",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "remove", "reason"),
    [
        ({"used_by": ["train-1"]}, False, "used by train-1"),
        ({"used_by": ["a"], "protected": True}, False, "used by a"),
        ({"protected": True}, False, "protected"),
        ({"last_snapshot": None}, False, "never snapshotted"),
        ({}, True, "data is in snapshot abc123"),
    ],
)
def test_the_removal_rule(
    tmp_path: object, changes: dict[str, object], remove: bool, reason: str
) -> None:
    from pathlib import Path

    from cargohold.inventory import removal_decision
    from cargohold.snapshots import open_repository

    repo = open_repository(str(Path(str(tmp_path)) / "repo"), create=True)
    decision = removal_decision(_Untouchable(), _summary(**changes), repo)  # type: ignore[arg-type]
    assert decision.remove is remove and reason in decision.reason


def test_the_removal_rule_keeps_a_volume_when_there_is_no_repository() -> None:
    from cargohold.inventory import removal_decision

    decision = removal_decision(_Untouchable(), _summary(), None)  # type: ignore[arg-type]
    assert not decision.remove and "never snapshotted" in decision.reason


def test_the_removal_rule_keeps_a_volume_whose_snapshot_cannot_be_read(tmp_path: object) -> None:
    from pathlib import Path

    from cargohold.inventory import removal_decision
    from cargohold.snapshots import open_repository

    repo = open_repository(str(Path(str(tmp_path)) / "repo"), create=True)
    summary = _summary(snapshot_current=False, last_snapshot="0" * 64)
    decision = removal_decision(_Untouchable(), summary, repo)  # type: ignore[arg-type]
    assert not decision.remove and "cannot be read" in decision.reason


def test_a_rescue_destination_is_a_folder_unless_written_as_a_volume() -> None:
    from pathlib import Path

    from cargohold.errors import UsageError
    from cargohold.guard import RescueTarget

    # A bare name is a folder, even when a volume of that name exists: nothing is guessed.
    assert RescueTarget.parse("keep") == RescueTarget(folder=Path("keep"))
    assert RescueTarget.parse("volume:keep") == RescueTarget(volume="keep")
    assert RescueTarget.parse("./a/b").folder == Path("a/b")
    for bad in ("", "volume:", "volume:../x", "volume:a/b"):
        with pytest.raises(UsageError):
            RescueTarget.parse(bad)


def test_a_layer_path_that_is_not_utf8_is_shown_not_a_crash() -> None:
    import os

    from cargohold.guard import shown

    raw = os.fsdecode(b"/workspace/w\xff.pt")  # as a walk of the layer returns it
    assert shown(raw) == "/workspace/w\ufffd.pt"
    shown(raw).encode("utf-8")  # printable on a UTF-8 terminal


def test_every_file_of_a_layer_is_ranked_through_spilled_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``scan --json`` ranks every file in bounded memory: runs sorted and spilled to temporary
    files, merged on reading -- the same order as one sort in memory, names of any kind kept."""
    import random

    from cargohold import guard

    rng = random.Random(7)
    names = ["a.pt", "b.jpg", "c.log", "d", "é.parquet", "x\udcff.bin", 'q"uote\n.ckpt']
    items = [
        guard.AtRisk(
            f"/w/{rng.randrange(50)}/{rng.choice(names)}",
            rng.choice(list(guard.RANK)),
            rng.randrange(5),
            f"reason {i}",
        )
        for i in range(500)
    ]
    expected = sorted(items, key=lambda f: (guard.RANK[f.category], -f.size, f.path))
    monkeypatch.setattr(guard._Ranking, "RUN", 7)
    ranking = guard._Ranking(iter(items))
    assert len(ranking._runs) == 72 and not ranking._memory
    first = list(ranking)
    assert [f.path for f in first] == [f.path for f in expected]
    assert [(f.category, f.size) for f in first] == [(f.category, f.size) for f in expected]
    assert sorted(first, key=lambda f: f.reason) == sorted(items, key=lambda f: f.reason)
    assert list(ranking) == first  # read again from the start
    monkeypatch.setattr(guard._Ranking, "RUN", 1000)
    assert [f.path for f in guard._Ranking(iter(items))] == [f.path for f in expected]
