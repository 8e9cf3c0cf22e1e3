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
