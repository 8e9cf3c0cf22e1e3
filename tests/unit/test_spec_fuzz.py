"""Hostile specs: any value of any type under the job's and a store's keys gives a plan or one
SpecError (exit 2), never another exception, and every plan renders and serialises.

A seeded share runs in CI; CARGOHOLD_FUZZ_EXAMPLES=5000 runs a bigger one on demand.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.errors import SpecError
from cargohold.plan import make_plan
from cargohold.render import render_compose, render_docker_run
from cargohold.spec import parse_spec

EXAMPLES = int(os.environ.get("CARGOHOLD_FUZZ_EXAMPLES", "150"))

JOB_KEYS = ["gpus", "ipc", "ulimits", "stop_timeout", "init", "resources", "devices", "network",
            "entrypoint", "read_only", "hardening", "env", "env_file", "secrets", "shm_size",
            "command", "workdir", "user", "stores"]
STORE_KEYS = ["target", "size", "source", "backing", "readonly", "volume", "external"]
INTERESTING: list[Any] = ["all", "host", "shareable", "1g", "0", "-1", "/dev/null", "/tmp",
                          "/ck/../etc", "//x", "/var/run", "HF_TOKEN", "A=B", "sh", "torchrun",
                          "volume", "tmpfs", "bind", "", " ", "[/]", "$HOME", "\u00e9", -1, 0, 1,
                          2**63, -(2**63), 1.5, math.inf, True, False]

scalars = st.one_of(
    st.sampled_from(INTERESTING),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["soft", "hard", "cpus", "memory", "pids_limit",
                                         "nofile", "memlock", "stack", "SEED", "A=B", "x"]),
                        inner, max_size=3),
    ),
    max_leaves=6,
)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"


NAMES = st.sampled_from(["SEED", "LR", "HF_TOKEN", "A=B", "X Y", "_ok", "WANDB_API_KEY"])
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "gpus": st.one_of(st.just("all"), st.integers(-1, 8),
                      st.lists(st.sampled_from(["0", "1", "GPU-4a1b", 3, "a b"]), max_size=3)),
    "ipc": st.sampled_from(["host", "private", "shareable", "none"]),
    "ulimits": st.dictionaries(
        st.sampled_from(["nofile", "memlock", "stack", "core", "bogus"]),
        st.one_of(st.integers(-2, 1 << 20),
                  st.fixed_dictionaries({"soft": st.integers(-1, 9), "hard": st.integers(-1, 9)})),
        max_size=3),
    "stop_timeout": st.integers(-1, 100_000),
    "init": st.booleans(), "read_only": st.booleans(), "hardening": st.booleans(),
    "resources": st.fixed_dictionaries({}, optional={
        "cpus": st.floats(0, 64), "memory": st.sampled_from(["512m", "1k", "8g", 0]),
        "pids_limit": st.integers(-1, 5000)}),
    "devices": st.lists(st.sampled_from(["/dev/zero", "/dev/a:/dev/b:rw", "/dev/../etc",
                                         "/dev/x:y", "/dev/x:/y:q"]), max_size=2),
    "network": st.sampled_from(["none", "host", "bridge", "net-1", "a b"]),
    "entrypoint": st.lists(st.text(min_size=1, max_size=5), max_size=3),
    "env": st.dictionaries(NAMES, st.one_of(st.text(max_size=8), st.integers()), max_size=3),
    "env_file": st.lists(st.sampled_from(["./a.env", "b.env"]), max_size=2),
    "secrets": st.lists(NAMES, max_size=3),
    "shm_size": st.sampled_from(["1g", "64m", "1k", 0, 1 << 30, "5000t"]),
    "command": st.lists(st.sampled_from(["sh", "-c", "python3", "torchrun", "x"]), max_size=3),
    "workdir": st.sampled_from(["/w", "/a/../b", "rel", "//w/"]),
    "user": st.sampled_from(["host", "root", "1000:1000", "5", "bob"]),
    "stores": st.lists(st.sampled_from(["s", "c", "nope"]), max_size=2, unique=True),
    "target": st.sampled_from(["/s", "/x/y/", "/ckpt", "/", "/a/../b", "rel"]),
    "size": st.sampled_from(["1g", "64m", 0, True, "lots", 1 << 20]),
    "source": st.sampled_from(["./data", "/var/run", "/run/docker.sock", "../x"]),
    "backing": st.sampled_from(["volume", "tmpfs", "bind", "nfs"]),
    "readonly": st.booleans(), "external": st.booleans(),
    "volume": st.sampled_from(["v1", "bad name"]),
}


def _draw(data: st.DataObject, keys: list[str], most: int) -> dict[str, Any]:
    chosen = data.draw(st.lists(st.sampled_from(keys), max_size=most, unique=True))
    # Mostly plausible values, so that plans and renders are reached; sometimes anything at all.
    return {k: data.draw(st.one_of(PLAUSIBLE[k], PLAUSIBLE[k], PLAUSIBLE[k], values))
            for k in chosen}


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_is_a_plan_or_one_spec_error(data: st.DataObject) -> None:
    job = _draw(data, JOB_KEYS, 6)
    store = _draw(data, STORE_KEYS, 3)
    lines = ['[project]', 'name = "fuzz"', "", "[stores.s]", 'kind = "scratch"']
    store.setdefault("target", "/s")
    lines += [f"{k} = {_toml(v)}" for k, v in store.items()]
    lines += ["", "[stores.c]", 'kind = "checkpoints"', 'target = "/ckpt"', "",
              "[jobs.train]", 'image = "img"']
    lines += [f"{k} = {_toml(v)}" for k, v in job.items()]
    try:
        spec = parse_spec("\n".join(lines) + "\n", base_dir=Path("/p"))
        plan = make_plan(spec, None, host_user=(1000, 1000))
    except SpecError as exc:
        assert exc.exit_code == 2 and exc.hint
        return
    render_docker_run(plan)
    render_compose([plan])
    json.dumps(plan.to_json())
    assert all(m.target.startswith("/") and ".." not in m.target.split("/") for m in plan.mounts)
