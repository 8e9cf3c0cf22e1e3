"""The spec: parsing, defaults, and one clear paragraph (exit 2) for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from cargohold.errors import SpecError
from cargohold.spec import StoreKind, load_spec, parse_size, parse_spec
from tests.conftest import run_cli

GOOD = """
[project]
name = "digits"

[stores.dataset]
kind = "dataset"
source = "./data"
target = "/data"

[stores.checkpoints]
kind = "checkpoints"
target = "/ckpt"

[jobs.train]
image = "img"
command = ["python3", "train.py"]
env = { SEED = "0", DEBUG = "true" }
"""


def _job(line: str) -> str:
    return GOOD.replace('image = "img"', 'image = "img"\n' + line)


def _env(line: str) -> str:
    return GOOD.replace('env = { SEED = "0", DEBUG = "true" }', line)


def _scratch(lines: str) -> str:
    return GOOD + '\n[stores.s]\nkind = "scratch"\n' + lines


def _cache_from(source: str) -> str:
    return GOOD + f'\n[stores.sock]\nkind = "cache"\ntarget = "/s"\nsource = "{source}"\n'


def test_parses_a_good_spec() -> None:
    spec = parse_spec(GOOD, base_dir=Path("/p"))
    assert spec.project.name == "digits"
    assert spec.stores["dataset"].kind is StoreKind.DATASET
    assert spec.jobs["train"].env == {"SEED": "0", "DEBUG": "true"}
    assert spec.host_path("./data") == Path("/p/data")
    assert spec.job_name(None) == "train"


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[project\nname='x'", None, "not valid TOML"),
        (GOOD.replace('kind = "dataset"', 'kind = "datasets"'), "stores.dataset.kind",
         "is not one of"),
        (GOOD.replace('target = "/ckpt"', 'target = "ckpt"'), "stores.checkpoints.target",
         "not an absolute path"),
        (GOOD.replace('target = "/ckpt"', 'target = "/data"'), "stores.checkpoints.target",
         "both mount at /data"),
        (GOOD.replace('target = "/ckpt"', 'target = "/data/ckpt"'),
         "stores.checkpoints.target", "lies inside"),
        (GOOD.replace('name = "digits"', 'name = "Digits!"'), "project.name", "cannot prefix"),
        (GOOD.replace("[project]\n", "[projct]\n"), "projct", "unknown key"),
        (GOOD + '\n[jobs.eval]\nimage = "x"\nstores = ["nope"]\n', "jobs.eval.stores",
         "not declared"),
        (GOOD.replace('command = ["python3", "train.py"]', 'command = "python3 train.py"'),
         "jobs.train.command", "list of arguments"),
        (GOOD.replace('image = "img"', 'image = "img"\nuser = "bob"'), "jobs.train.user",
         "numeric"),
        (GOOD.replace('image = "img"\n', ""), "jobs.train.image", "required"),
        (GOOD + '\n[stores.s]\nkind = "scratch"\ntarget = "/s"\nsize = "lots"\n',
         "stores.s.size", "not a size"),
        (GOOD + '\n[stores.c2]\nkind = "checkpoints"\ntarget = "/c2"\nbacking = "tmpfs"\n',
         "stores.c2.backing", "die with the container"),
        (GOOD + '\n[stores.b]\nkind = "cache"\ntarget = "/b"\nbacking = "bind"\n',
         "stores.b.source", "no source"),
        (_job('gpus = "lots"'), 'jobs.train.gpus',
         "is not \"all\""),
        (_job('gpus = 0'), 'jobs.train.gpus',
         "at least 1"),
        (_job('gpus = true'), 'jobs.train.gpus',
         "a number of GPUs"),
        (_job('gpus = ["0", "a b"]'), 'jobs.train.gpus',
         "not a GPU index"),
        (_job('ulimits = { memlock = -2 }'), 'jobs.train.ulimits',
         "negative"),
        (_job('ulimits = { nofile = { soft = 10, hard = 5 } }'), 'jobs.train.ulimits',
         "above the hard"),
        (_job('ulimits = { files = 10 }'), 'jobs.train.ulimits',
         "not a resource limit"),
        (_job('ipc = "bogus"'), 'jobs.train.ipc',
         "is not one of"),
        (_job('stop_timeout = -1'), 'jobs.train.stop_timeout',
         "greater than or equal"),
        (_job('shm_size = "1g"\nipc = "host"'), 'jobs.train.shm_size',
         "ignores shm_size"),
        (_job('shm_size = true'), 'jobs.train.shm_size',
         "not a size"),
        (_job('shm_size = "99999999t"'), 'jobs.train.shm_size',
         "larger than any machine"),
        (_job('resources = { cpus = 0 }'), 'jobs.train.resources.cpus',
         "greater than"),
        (_job('resources = { memory = "1k" }'), 'jobs.train.resources.memory',
         "at least 6m"),
        (_job('devices = ["/etc/passwd"]'), 'jobs.train.devices',
         "not a device"),
        (_job('entrypoint = "python3"'), 'jobs.train.entrypoint',
         "list of arguments"),
        (_job('network = "a b"'), 'jobs.train.network',
         "not a network"),
        (_job('secrets = ["HF TOKEN"]'), 'jobs.train.secrets',
         "not an environment variable"),
        (_env('env = { "A=B" = "x" }'), 'jobs.train.env',
         "not an environment variable name"),
        (_env('env = { SEED = 1 }'), 'jobs.train.env',
         "quote the value"),
        (_env('env = { SEED = [1] }'), 'jobs.train.env',
         "quote the value"),
        (_env('env = { HF_TOKEN = "hf_x" }'), 'jobs.train.env',
         "looks like a credential"),
        (_job('workdir = "/a/../etc"'), 'jobs.train.workdir',
         "climbs"),
        (_scratch('target = "/ck/../etc"'), 'stores.s.target',
         "climbs"),
        (_scratch('target = "/s"\nsize = true'), 'stores.s.size',
         "not a size"),
        (_scratch('target = "/s"\nsize = 0'), 'stores.s.size',
         "no limit"),
        (_scratch('target = "/s"\nsize = "5000t"'), 'stores.s.size',
         "larger than any machine"),
        (_cache_from("/var/run/docker.sock"), 'stores.sock.source',
         "Docker socket"),
        (_cache_from("/var/run"), 'stores.sock.source',
         "Docker socket"),
        (_cache_from("/"), 'stores.sock.source',
         "Docker socket"),
    ],
)
def test_bad_spec_names_the_key(text: str, key: str | None, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text, base_dir=Path("/p"))
    assert fragment in info.value.message
    assert info.value.key == key
    assert info.value.hint


def test_unknown_job() -> None:
    spec = parse_spec(GOOD, base_dir=Path("/p"))
    with pytest.raises(SpecError, match="No job named 'nope'") as info:
        spec.job_name("nope")
    assert "train" in (info.value.hint or "")


def test_missing_dataset_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cargohold.toml").write_text(GOOD)
    with pytest.raises(SpecError, match="does not exist") as info:
        load_spec(tmp_path)
    assert info.value.key == "stores.dataset.source"
    (tmp_path / "data").mkdir()
    assert load_spec(tmp_path).base_dir == tmp_path


def test_dataset_source_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("x")
    (tmp_path / "cargohold.toml").write_text(GOOD)
    with pytest.raises(SpecError, match="is a file, not a folder") as info:
        load_spec(tmp_path)
    assert info.value.key == "stores.dataset.source"


def test_source_linking_to_the_docker_socket_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to("/run")
    (tmp_path / "cargohold.toml").write_text(GOOD)
    with pytest.raises(SpecError, match="Docker socket") as info:
        load_spec(tmp_path)
    assert info.value.key == "stores.dataset.source"


def test_artifacts_folder_may_be_missing(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    text = GOOD + '\n[stores.out]\nkind = "artifacts"\nsource = "./out"\ntarget = "/out"\n'
    (tmp_path / "cargohold.toml").write_text(text)
    load_spec(tmp_path / "cargohold.toml")
    assert not (tmp_path / "out").exists()  # created by the runner, not by reading the spec


@pytest.mark.parametrize(("text", "size"), [("1g", 1 << 30), ("512m", 512 << 20),
                                            ("64MiB", 64 << 20), ("1.5k", 1536), (10, 10)])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[project\nname='x'", "not valid TOML"),
        (GOOD.replace('kind = "dataset"', 'kind = "datasets"'), "is not one of"),
        (GOOD.replace('target = "/ckpt"', 'target = "ckpt"'), "not an absolute path"),
        (GOOD.replace('target = "/ckpt"', 'target = "/data"'), "both mount at /data"),
        (GOOD, "does not exist"),  # the dataset folder is missing
        (GOOD.replace('image = "img"', 'image = "img"\ngpus = "lots"'), "jobs.train.gpus"),
        (GOOD.replace('image = "img"', 'image = "img"\nulimits = { stack = -5 }'),
         "jobs.train.ulimits"),
        (GOOD.replace('image = "img"', 'image = "img"\nipc = "everything"'), "jobs.train.ipc"),
    ],
)
def test_cli_reports_bad_spec_in_one_paragraph(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "cargohold.toml").write_text(text)
    result = run_cli("plan", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n\n") == 0  # one paragraph


def test_cli_unknown_job(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "cargohold.toml").write_text(GOOD)
    result = run_cli("plan", "nope", cwd=tmp_path)
    assert result.returncode == 2
    assert "No job named 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_cli_without_spec(tmp_path: Path) -> None:
    result = run_cli("plan", cwd=tmp_path)
    assert result.returncode == 2
    assert "cargohold init" in result.stderr


def test_init_writes_a_valid_spec_and_refuses_to_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "My Project"
    folder.mkdir()
    assert run_cli("init", cwd=folder).returncode == 0
    spec = parse_spec((folder / "cargohold.toml").read_text(), base_dir=folder)
    assert spec.project.name == "my-project"
    again = run_cli("init", cwd=folder)
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.parametrize("args", [(), ("volume",), ("run", "--bogus"), ("restore",),
                                  ("lint", "--sarif", "--json")])
def test_usage_errors_are_one_clear_message(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Usage" in result.stdout or "hint:" in result.stderr


def test_missing_env_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "cargohold.toml").write_text(_job('env_file = "./train.env"'))
    with pytest.raises(SpecError, match="does not exist") as info:
        load_spec(tmp_path)
    assert info.value.key == "jobs.train.env_file"
    (tmp_path / "train.env").write_text("A=1\n")
    assert load_spec(tmp_path).jobs["train"].env_file == ["./train.env"]


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("stop_timeout = true", "jobs.train.stop_timeout"),
        ("init = 1", "jobs.train.init"),
        ('read_only = "yes"', "jobs.train.read_only"),
        ('hardening = "no"', "jobs.train.hardening"),
        ("resources = { cpus = true }", "jobs.train.resources.cpus"),
        ("resources = { pids_limit = true }", "jobs.train.resources.pids_limit"),
        ('devices = ["/dev/null:/x:rwmz"]', "jobs.train.devices"),
        ('devices = ["/dev/null:x"]', "jobs.train.devices"),
        # Docker reads these as /dev/mem, /dev/sda, or every device of the host:
        ('devices = ["/dev//mem"]', "jobs.train.devices"),
        ('devices = ["/dev/./mem"]', "jobs.train.devices"),
        ('devices = ["/dev/sda/"]', "jobs.train.devices"),
        ('devices = ["/dev/"]', "jobs.train.devices"),
        ('devices = ["/dev/a\\u0000b"]', "jobs.train.devices"),
        ('env_file = "a\\u0000b"', "jobs.train.env_file"),
        ("ulimits = { nofile = -1 }", "jobs.train.ulimits"),
        ("ulimits = { nofile = 0 }", "jobs.train.ulimits"),
        ('gpus = ["0", "0"]', "jobs.train.gpus"),
        ("gpus = 9223372036854775807", "jobs.train.gpus"),
        ('entrypoint = [""]', "jobs.train.entrypoint"),
        ('entrypoint = ["python3", "a\\u0000b"]', "jobs.train.entrypoint"),
        ('secrets = ["A", "B\\u0000"]', "jobs.train.secrets"),
    ],
)
def test_no_silent_coercion_of_runtime_values(line: str, key: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_job(line), base_dir=Path("/p"))
    assert info.value.key == key


def test_runtime_values_that_are_fine() -> None:
    spec = parse_spec(_job('gpus = [0, 1]\nresources = { cpus = 2 }\nsecrets = "HF_TOKEN"\n'
                           'devices = ["/dev/null:/dev/x:rw"]\n'
                           'ulimits = { nofile = 65536, stack = -1 }'),
                      base_dir=Path("/p"))
    job = spec.jobs["train"]
    assert job.gpus == ["0", "1"] and job.secrets == ["HF_TOKEN"]


def test_run_takes_everything_after_double_dash_as_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """click's own parsing, with the words after `--` set aside first (no module global)."""
    import cargohold.engine
    import cargohold.jobs
    from cargohold.cli import main

    (tmp_path / "data").mkdir()
    (tmp_path / "cargohold.toml").write_text(GOOD)
    seen: list[tuple[str, ...] | None] = []

    def fake_run_job(engine: object, plan: object, **kwargs: object) -> object:
        seen.append(kwargs["command"])  # type: ignore[arg-type]
        return cargohold.jobs.RunResult("c", 0, 1, None)

    monkeypatch.setattr(cargohold.engine, "connect", lambda: object())
    monkeypatch.setattr(cargohold.jobs, "run_job", fake_run_job)
    spec = str(tmp_path / "cargohold.toml")
    assert main(["run", "-f", spec, "--", "python3", "--resume", "x", "--", "-d"]) == 0
    assert main(["run", "train", "-f", spec, "--resume", "never"]) == 0
    assert main(["run", "-f", spec, "--"]) == 0
    assert seen == [("python3", "--resume", "x", "--", "-d"), None, None]
    assert main(["run", "-f", spec, "--bogus", "--", "x"]) == 2


def test_a_rootless_engine_socket_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime_dir = tmp_path / "run-user"
    runtime_dir.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    (tmp_path / "data").mkdir()
    text = GOOD + f'\n[stores.sock]\nkind = "cache"\ntarget = "/s"\nsource = "{runtime_dir}"\n'
    (tmp_path / "cargohold.toml").write_text(text)
    with pytest.raises(SpecError, match="Docker socket") as info:
        load_spec(tmp_path)
    assert info.value.key == "stores.sock.source"


@pytest.mark.parametrize("device", ["/dev/mem", "/dev/sda1", "/dev/nvme0n1", "/dev/mapper/vg"])
def test_devices_that_are_the_host_are_refused(device: str) -> None:
    with pytest.raises(SpecError, match="never privileged") as info:
        parse_spec(_job(f'devices = ["{device}"]'), base_dir=Path("/p"))
    assert info.value.key == "jobs.train.devices"


@pytest.mark.skipif(not Path("/dev/zram0").is_block_device(), reason="needs a block device "
                    "whose name the pattern does not know")
def test_any_block_device_is_refused_when_the_spec_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "cargohold.toml").write_text(_job('devices = ["/dev/zram0"]'))
    with pytest.raises(SpecError, match="block device") as info:
        load_spec(tmp_path)
    assert info.value.key == "jobs.train.devices"


def test_a_device_folder_that_holds_a_disk_is_refused(tmp_path: Path) -> None:
    """Docker maps a folder's devices recursively (/dev itself would hand the job every disk):
    a folder holding a block device is refused, one of character devices (/dev/infiniband's
    kind) is fine."""
    import os as _os
    import secrets as _secrets
    import shutil as _shutil
    import stat as _stat

    from cargohold.spec import check_host_paths

    if _os.geteuid() != 0:
        pytest.skip("making device nodes needs root")
    folder = Path("/dev/shm") / f"cargohold-test-{_secrets.token_hex(4)}"
    (folder / "sub").mkdir(parents=True)
    try:
        _os.mknod(folder / "uverbs0", _stat.S_IFCHR | 0o600, _os.makedev(1, 3))
        (tmp_path / "data").mkdir()
        (tmp_path / "cargohold.toml").write_text(_job(f'devices = ["{folder}"]'))
        check_host_paths(load_spec(tmp_path))  # character devices only: fine
        _os.mknod(folder / "sub" / "disk", _stat.S_IFBLK | 0o600, _os.makedev(7, 0))
        with pytest.raises(SpecError, match=r"holds .*/sub/disk") as info:
            check_host_paths(load_spec(tmp_path))
        assert info.value.key == "jobs.train.devices"
    finally:
        _shutil.rmtree(folder)


def test_a_nul_in_a_nested_table_names_the_innermost_key() -> None:
    text = (
        '[project]\nname = "p"\n[stores.ck]\nkind = "checkpoints"\ntarget = "/ck"\n'
        '[stores.ck.snapshots]\nevery = "1h"\nrepo = "/x\\u0000y"\n[jobs.train]\nimage = "i"\n'
    )
    with pytest.raises(SpecError) as info:
        parse_spec(text, base_dir=Path("/p"))
    assert info.value.key == "stores.ck.snapshots.repo"
