"""lint on a corpus of realistic compose files and docker run lines, and on hostile inputs.

Each corpus file says what it must produce: ``#! CHnnn`` at the end of the line a finding must
point at (or ``# expect: CHnnn@LINE`` where a line cannot carry a comment), and ``# clean:``
for the traps it holds that must *not* be reported. ``# with: FILE`` counts the markers of a
file it extends or includes. The set of findings must equal the set of markers, exactly.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from cargohold.errors import UsageError
from cargohold.lint import REGISTRY, lint, lint_compose, lint_docker_run, select_rules
from tests.conftest import run_cli

CORPUS = Path(__file__).resolve().parent.parent / "lint_corpus"
FILES = sorted(
    p
    for p in CORPUS.rglob("*")
    if p.suffix in (".yml", ".yaml", ".sh")
    and "# clean:" in p.read_text(encoding="utf-8", errors="replace")
)
_MARK = re.compile(r"#! ((?:CH\d{3}\s*)+)$")


def _marks(path: Path) -> set[tuple[str, int, str]]:
    found = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = _MARK.search(line)
        if match:
            found |= {(path.name, number, rule) for rule in match.group(1).split()}
        if line.startswith("# expect:"):
            found |= {(path.name, int(n), rule) for rule, n in re.findall(r"(CH\d{3})@(\d+)", line)}
    return found


def _expected(path: Path) -> set[tuple[str, int, str]]:
    expected = _marks(path)
    for other in re.findall(r"^# with: (\S+)", path.read_text(), re.MULTILINE):
        expected |= _marks(path.parent / other)
    return expected


@pytest.fixture(autouse=True)
def _builtin_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    # The corpus runs on lint's own resolver (fast, no subprocess); test_lint_outputs holds the
    # Compose binary's path to the same findings, file by file.
    monkeypatch.setenv("CARGOHOLD_COMPOSE", "none")


def _lint(path: Path) -> list:  # type: ignore[type-arg]
    return lint([path], []).findings


def test_corpus_is_large_and_covers_every_rule() -> None:
    assert len(FILES) >= 30
    covered = {rule for path in FILES for _, _, rule in _expected(path)}
    assert covered == set(REGISTRY)
    clean = [p for p in FILES if not _expected(p)]
    assert len(clean) >= 5  # files that must produce nothing at all


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_corpus_file_gets_exactly_its_findings(path: Path) -> None:
    clean = re.search(r"^# clean: (.+)$", path.read_text(), re.MULTILINE)
    assert clean and re.search(r"CH\d{3}|no ", clean.group(1)), "name the traps: # clean: …"
    findings = _lint(path)
    got = {(Path(f.file).name, f.line, f.rule) for f in findings}
    assert got == _expected(path), [f"{f.rule} {f.line} {f.message}" for f in findings]
    for f in findings:
        assert f.evidence and f.fix and f.message and f.subject
        assert f.severity == REGISTRY[f.rule].severity
        assert 1 <= f.line <= len(Path(f.file).read_text().splitlines())


def test_evidence_says_why_a_mount_is_a_dataset() -> None:
    [finding] = _lint(CORPUS / "interpolation-defaults.yml")
    assert any("--data_dir /data/coco" in e for e in finding.evidence)
    assert any("coco" in e for e in finding.evidence)


# -- docker run lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "rules"),
    [
        (
            "docker run --rm --shm-size 2g -u 1000:1000 -v ckpt:/ckpt -v data:/data:ro "
            "pytorch/pytorch python train.py --save-dir /ckpt --num_workers 4",
            set(),
        ),
        ("docker run -u 1000 pytorch/pytorch python train.py --save_dir /out", {"CH001"}),
        ("sudo docker run -it pytorch/pytorch python train.py --save_dir /out", {"CH001"}),
        ("sudo -u ml docker container run pytorch/pytorch python t.py --output_dir /o", {"CH001"}),
        (
            "NCCL_DEBUG=INFO docker run -u 1 pytorch/pytorch torchrun t.py --ckpt_save_dir /c",
            {"CH001"},
        ),
        ("podman run -u 1 pytorch/pytorch python t.py --output_dir /o && ls | wc", {"CH001"}),
        (
            "nvidia-docker run -u 1 -v c:/c pytorch/pytorch torchrun train.py --ckpt_dir /c",
            {"CH008"},
        ),
        ("docker run --gpus all --ipc=host -u 1 -v c:/c pytorch/pytorch torchrun train.py", set()),
        ("docker run -u 1 --tmpfs /checkpoints pytorch/pytorch python t.py", {"CH005"}),
        (
            "docker run -u 1 --mount type=volume,target=/outputs pytorch/pytorch python t.py "
            "--output_dir /outputs",
            {"CH003"},
        ),
        (
            "docker run --privileged -v /var/run/docker.sock:/var/run/docker.sock myorg/job",
            {"CH009", "CH010"},
        ),
        ("docker run -e TORCH_HOME=/root/.cache/torch -u 1 pytorch/pytorch python x.py", {"CH002"}),
        (
            "docker run -itd -u 1 -w /app -v outs:/app/out pytorch/pytorch python t.py "
            "--output_dir out/run1",
            set(),
        ),
        ("docker run -u 1 -w /app pytorch/pytorch python t.py --output_dir out/run1", {"CH001"}),
        # a relative output, the working directory unknown: silent while some mount could hold
        # it, a certain loss when the container has no volume or bind mount at all
        ("docker run -u 1 -v d:/d myorg/unknown python t.py --output_dir out/run1", set()),
        ("docker run -u 1 myorg/unknown python t.py --output_dir out/run1", {"CH001"}),
        ("docker run -u 1 --tmpfs /s myorg/unknown python t.py --output_dir out/run1", {"CH001"}),
        ("docker run -u 1 myorg/unknown python t.py --output_dir $OUT/run1", set()),
        ("docker run -u 1 myorg/unknown python t.py --output_dir ~/run1", set()),
        ("docker run -u 1 pytorch/pytorch python t.py --output_dir /path/to/output", set()),
        ("docker run -u 1 pytorch/pytorch python t.py --output_dir s3://bucket/run", set()),
        ("docker run -d postgres:16", {"CH011"}),
        ("docker run -d -p 8080:8080 wandb/local", {"CH011"}),
        ("docker run -d -v w:/vol -p 8080:8080 wandb/local", set()),
        ("docker run -u 1 pytorch/pytorch python train.py --out /results/run1", {"CH001"}),
        ("docker run -u 1 pytorch/pytorch python train.py --out json", set()),
        (
            "docker run -u 1 -v c:/c pytorch/pytorch sh -c 'ls /results/checkpoints && "
            "python train.py /c'",
            set(),
        ),
        (
            "docker run -u 1 -v c:/c pytorch/pytorch python train.py /c /results/checkpoints",
            {"CH001"},
        ),
        ("docker run -d --tmpfs /var/lib/postgresql/data postgres:16", set()),
        ("docker run -d redis:7 redis-server --appendonly yes", {"CH011"}),
        ("docker run -d redis:7", set()),
        ("$ docker run -u 1 pytorch/pytorch python t.py --output_dir /o", {"CH001"}),
        ("if docker run -u 1 pytorch/pytorch python t.py --output_dir /o; then :; fi", {"CH001"}),
        ("\t@docker run -u 1 pytorch/pytorch python t.py --output_dir /o", {"CH001"}),
        ("docker run -d ghcr.io/mlflow/mlflow mlflow server --host 0.0.0.0", {"CH011"}),
        (
            "docker run -d -v m:/m ghcr.io/mlflow/mlflow mlflow server --backend-store-uri "
            "sqlite:////m/db.sqlite --default-artifact-root /m/a",
            set(),
        ),
        (
            "docker run -d -v m:/m ghcr.io/mlflow/mlflow mlflow server --backend-store-uri "
            "sqlite:////m/db.sqlite --default-artifact-root /art",
            {"CH011"},
        ),
        ("docker run -v e:/etcd quay.io/coreos/etcd:v3.5.5 etcd --data-dir /etcd", set()),
        (
            "docker run --gpus all -u 1 -v c:/c tensorflow/tensorflow:latest-gpu python train.py "
            "--model_dir /c",
            set(),
        ),
        (
            "docker run --gpus all -u 1 -v c:/c tensorflow/tensorflow:latest-gpu python train.py "
            "--model_dir /tmp/model",
            {"CH001"},
        ),
        ("docker run -u 1 -v c:/c pytorch/pytorch python infer.py --model_dir /m", set()),
        ("docker run -it --gpus all -v /srv/coco:/coco pytorch/pytorch", set()),
        (
            "docker run -u 1 -v /srv/coco:/coco pytorch/pytorch python eval.py --data /coco",
            {"CH004"},
        ),
        (
            "docker run --device nvidia.com/gpu=all -u 1 -v c:/c pytorch/pytorch torchrun train.py",
            {"CH008"},
        ),
        (
            "docker run -v $v:/data ghcr.io/huggingface/text-generation-inference --model-id x",
            set(),
        ),
        ("docker run ghcr.io/huggingface/text-generation-inference --model-id x", {"CH002"}),
        ("docker run -d -v pg:/var/lib/postgresql/data postgres:16", set()),
    ],
)
def test_docker_run_lines(line: str, rules: set[str]) -> None:
    assert {f.rule for f in lint_docker_run(line).findings} == rules


def test_docker_run_continuations_keep_their_lines() -> None:
    text = "docker run --rm \\\n  -u 1000 \\\n  pytorch/pytorch \\\n  python t.py --output_dir /o\n"
    [finding] = lint_docker_run(text).findings
    assert (finding.rule, finding.line) == ("CH001", 4)


def test_docker_run_without_image_or_run_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no image"):
        lint_docker_run("docker run --rm -v a:/b")
    with pytest.raises(UsageError, match="No `docker run`"):
        lint_docker_run("docker compose up -d")


def test_unknown_image_is_said_not_hidden() -> None:
    report = lint_docker_run("docker run -v d:/d myorg/trainer:3 python t.py --output_dir out")
    assert not report.findings
    assert any("myorg/trainer" in note and "unknown" in note for note in report.notes)
    # with no mount at all the working directory does not matter: the loss is certain
    report = lint_docker_run("docker run --rm myorg/trainer:3 python t.py --output_dir out")
    [finding] = report.findings
    assert finding.rule == "CH001" and "--rm" in finding.message
    assert any("no volume or bind mount" in e for e in finding.evidence)
    assert any("myorg/trainer" in note for note in report.notes)


# -- classes found on held-out real-world files (issue 13's audit) -------------------------------


@pytest.mark.parametrize(
    ("line", "rules"),
    [
        # `ckpt_dir` is as often the weights a job reads (Meta llama, A1111): not an output name
        (
            "docker run -u 1 pytorch/pytorch torchrun --nproc_per_node 1 "
            "example_chat_completion.py --ckpt_dir /opt/llama-2-7b-chat/ "
            "--tokenizer_path /opt/tokenizer.model",
            set(),
        ),
        ("docker run -u 1 myorg/sd-webui python launch.py --ckpt-dir /opt/sd/models", set()),
        ("docker run -u 1 pytorch/pytorch python t.py --checkpoint_dir /opt/c", {"CH001"}),
        ("docker run -u 1 -e CKPT_DIR=/opt/llama pytorch/pytorch torchrun chat.py", set()),
        ("docker run -u 1 -e SAVE_CKPT_DIR=/c pytorch/pytorch torchrun train.py", {"CH001"}),
        # ... but a --ckpt_dir whose path names a checkpoints folder is where the job saves
        (
            "docker run -u 1 --ipc=host pytorch/pytorch python train.py --data /data "
            "--ckpt_dir /workspace/checkpoints",
            {"CH001"},
        ),
        # Megatron writes index caches beside --data-path unless --data-cache-path is set:
        # its dataset mount is written, so no "mount it read-only" advice (torchvision's
        # references' --data-path only reads: tested in the corpus, extends-base.yml)
        (
            "docker run -u 1 --ipc=host -v /srv/pile:/data/pile -v ck:/ck nvcr.io/nvidia/pytorch "
            "torchrun pretrain_gpt.py --data-path /data/pile/pile_text_document --save /ck",
            set(),
        ),
        (
            "docker run -u 1 --ipc=host -v /srv/pile:/data/pile -v ck:/ck nvcr.io/nvidia/pytorch "
            "torchrun pretrain_gpt.py --data-path /data/pile/pile_text_document --save /ck "
            "--data-cache-path /ck/cache",
            {"CH004"},
        ),
        # Jupyter's notebook folder, from its arguments, wherever the command starts it
        (
            "docker run -p 8888:8888 -v ./nb:/notebooks jupyter/datascience-notebook "
            "start-notebook.sh --NotebookApp.notebook_dir=/notebooks --NotebookApp.token=''",
            set(),
        ),
        (
            "docker run -p 8888:8888 -v w:/home/jovyan/work jupyter/scipy-notebook "
            "start-notebook.py --ServerApp.root_dir=/srv/nb",
            {"CH011"},
        ),
        (
            'docker run -p 8888:8888 pytorch/pytorch bash -c "pip install jupyterlab && '
            'jupyter lab --ip=0.0.0.0 --allow-root --notebook-dir=/workspace"',
            {"CH011"},
        ),
        (
            'docker run -p 8888:8888 -v nb:/workspace pytorch/pytorch bash -c "pip install '
            'jupyterlab && jupyter lab --ip=0.0.0.0 --allow-root --notebook-dir=/workspace"',
            set(),
        ),
        (
            "docker run --runtime nvidia -it --rm -v $PWD:/tmp/working -w=/tmp/working "
            "-p 8888:8888 gcr.io/kaggle-gpu-images/python jupyter notebook --no-browser "
            '--ip="0.0.0.0" --notebook-dir=/tmp/working --allow-root',
            set(),
        ),
        (
            "docker run -it -p 8888:8888 gcr.io/kaggle-gpu-images/python jupyter notebook "
            "--notebook-dir=/tmp/working --allow-root",
            {"CH011"},
        ),
        # the working directory is the notebook folder when no argument names one
        ("docker run -p 8888:8888 -w /nb myorg/img python -m jupyterlab --allow-root", {"CH011"}),
        ("docker run -p 8888:8888 myorg/img jupyter lab --allow-root", set()),  # unknown folder
        (
            'docker run -v o:/out pytorch/pytorch sh -c "pip install jupyter notebook && '
            'python train.py --output_dir /out"',
            set(),  # installing jupyter does not run it
        ),
        # placeholders are examples to fill in, not datasets or host folders
        (
            "docker run -v /path/to/your/data:/data pytorch/pytorch python train.py "
            "--data_dir /data",
            set(),
        ),
        (
            "docker run -v /srv/shards:/data pytorch/pytorch python train.py --data_dir /data",
            {"CH004"},
        ),
        (
            "docker run -v /path/to/output:/output pytorch/pytorch python train.py "
            "--output_dir /output",
            set(),
        ),
        (
            "docker run -v /srv/runs:/output pytorch/pytorch python train.py --output_dir /output",
            {"CH007"},
        ),
        # a generic `--data-dir` of a workload that is not training is not a dataset...
        ("docker run -v ./sd:/data myorg/sd-webui python launch.py --data-dir /data", set()),
        ("docker run -u 1 -v m:/data myorg/indexer python index.py --data /data", set()),
        # ...unless the path itself names one
        ("docker run -u 1 -v m:/data myorg/x python evaluate.py --data /data/coco/val", {"CH004"}),
        ("docker run -u 1 -v m:/data myorg/x python evaluate.py --dataset_dir /data", {"CH004"}),
        ("docker run -u 1 -v m:/data myorg/x python evaluate.py --data /data/train", {"CH004"}),
        # output flags of TF/Keras, Ray, Flax and friends
        ("docker run -u 1 tensorflow/tensorflow python task.py --job-dir /tmp/keras", {"CH001"}),
        ("docker run -u 1 myorg/ray python tune.py --storage_path /home/ray/results", {"CH001"}),
        ("docker run -u 1 myorg/ray python tune.py --local_dir /home/ray/results", {"CH001"}),
        ("docker run -u 1 myorg/x python train.py --tb_log_dir /tb", {"CH001"}),
        ("docker run -u 1 myorg/x python export.py --output_model /exp/m.onnx", {"CH001"}),
        ("docker run -u 1 myorg/x python export.py --output_model onnx", set()),
        ("docker run -u 1 myorg/flax python main.py --workdir=/tmp/mnist", {"CH001"}),
        ("docker run -u 1 myorg/flax python main.py workdir=/tmp/mnist", {"CH001"}),
        ("docker run -u 1 myorg/sky sky launch --workdir /src task.yaml", set()),  # a tool's own
        (
            "docker run -u 1 python:3.11 huggingface-cli download gpt2 --local-dir /models/gpt2",
            {"CH002"},  # a download: kept or fetched again, not a job's output
        ),
        (
            "docker run -u 1 -v m:/models python:3.11 huggingface-cli download gpt2 "
            "--local-dir /models/gpt2",
            set(),
        ),
    ],
)
def test_audited_classes(line: str, rules: set[str]) -> None:
    assert {f.rule for f in lint_docker_run(line).findings} == rules, line


def test_suppressions_are_read_once_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many findings in one file scan its comments once, not once per finding (a 2,000-service
    file took seconds per hundred services)."""
    import cargohold.lint as lint_module

    calls: list[str] = []
    real = lint_module._suppressions

    def counting(file: str) -> dict[int, set[str] | None]:
        calls.append(file)
        return real(file)

    monkeypatch.setattr(lint_module, "_suppressions", counting)
    body = "".join(
        f"  s{i}:{'  # cargohold: ignore CH011' if i % 2 else ''}\n    image: postgres:16\n"
        for i in range(300)
    )
    (tmp_path / "compose.yml").write_text("services:\n" + body)
    report = lint([tmp_path / "compose.yml"], [])
    assert len(report.findings) == 150 and report.suppressed == 150
    assert calls == [str(tmp_path / "compose.yml")]


# -- compose semantics --------------------------------------------------------------------------


def test_interpolation_defaults_and_unset_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CKPT", raising=False)
    monkeypatch.setenv("RUNS", "/runs")
    (tmp_path / ".env").write_text("IMAGE_TAG=2.3.0\n")
    (tmp_path / "compose.yml").write_text(
        "services:\n"
        "  t:\n"
        "    image: pytorch/pytorch:${IMAGE_TAG}\n"
        "    user: '1'\n"
        "    volumes: ['${CKPT:-ckpt}:/ckpt', '${UNSET_THING}:/models']\n"
        "    command: python t.py --ckpt_dir /ckpt --output_dir ${RUNS}/a --log_dir $${HOME}/x\n"
    )
    [finding] = lint_compose([tmp_path / "compose.yml"]).findings
    assert finding.rule == "CH001" and finding.subject == "/runs/a"


def test_merge_keys_explicit_keys_win(tmp_path: Path) -> None:
    (tmp_path / "c.yml").write_text(
        "x-a: &a {image: 'pytorch/pytorch', user: '1', command: 'python t.py --output_dir /a'}\n"
        "x-b: &b {command: 'python t.py --output_dir /b', volumes: ['b:/b']}\n"
        "services:\n"
        "  first: {<<: [*a, *b]}\n"
        "  own: {<<: *a, command: 'python t.py --output_dir /own'}\n"
    )
    subjects = {(f.service, f.subject) for f in lint_compose([tmp_path / "c.yml"]).findings}
    assert subjects == {("first", "/a"), ("own", "/own")}


def test_suppression_select_and_ignore() -> None:
    report = lint([CORPUS / "suppressed.yml"], [])
    assert report.suppressed == 3 and [f.rule for f in report.findings] == ["CH004"]
    path = CORPUS / "socket-and-privileged.yml"
    assert {f.rule for f in lint([path], [], select=["CH009"]).findings} == {"CH009"}
    assert {f.rule for f in lint([path], [], ignore=["privileged"]).findings} == {"CH009"}
    with pytest.raises(UsageError, match="No lint rule"):
        select_rules(["CH999"], None)


# -- hostile inputs ------------------------------------------------------------------------------


HOSTILE: dict[str, bytes] = {
    "unclosed": b"services: [unclosed\n",
    "no-services": b"just: a mapping\n",
    "a-list": b"- a\n- list\n",
    "binary": b"\xff\xfe\x00binary",
    "self-alias": b"a: &a [*a]\n",
    "deep": b"services:\n  x: " + b"[" * 2000 + b"]" * 2000 + b"\n",
    "extends-itself": b"services:\n  x:\n    extends: x\n",
    "alias-bomb": b"a: &a [x,x,x,x,x,x,x,x,x,x]\n"
    + b"".join(
        b"%c: &%c [%s]\n" % (98 + i, 98 + i, b",".join([b"*%c" % (97 + i)] * 10)) for i in range(8)
    )
    + b"services:\n  x:\n    image: *i\n",
    "services-a-string": b"services: nope\n",
    "volume-a-mapping-of-lists": b"services:\n  x:\n    volumes: {a: [1]}\n    command: 3\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_compose_files_are_usage_errors_or_lint(tmp_path: Path, name: str) -> None:
    path = tmp_path / "compose.yml"
    path.write_bytes(HOSTILE[name])
    try:
        lint([path], [])
    except UsageError as exc:
        assert exc.hint


def test_hostile_input_on_the_command_line_is_one_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_bytes(HOSTILE["alias-bomb"])
    result = run_cli("lint", str(path))
    assert result.returncode == 2 and "hint:" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_formats_and_exit_codes() -> None:
    clean, dirty = CORPUS / "gpu-ipc-host.yml", CORPUS / "socket-and-privileged.yml"
    ok = run_cli("lint", str(clean))
    assert ok.returncode == 0 and "no findings" in ok.stdout
    text = run_cli("lint", str(dirty))
    assert text.returncode == 1 and "evidence:" in text.stdout and "fix:" in text.stdout
    data = json.loads(run_cli("lint", str(dirty), "--json").stdout)
    assert {f["rule"] for f in data["findings"]} == {"CH009", "CH010"}
    assert all(f["evidence"] for f in data["findings"])
    nothing = run_cli("lint")
    assert nothing.returncode == 2 and "hint:" in nothing.stderr
    unknown = run_cli("lint", str(clean), "--select", "CH999")
    assert unknown.returncode == 2 and "No lint rule" in unknown.stderr
    line = run_cli("lint", "--docker-run", "docker run --rm -u 1 pytorch/pytorch python t.py "
                   "--output_dir /out  # cargohold: ignore CH001")  # fmt: skip
    assert line.returncode == 0 and "1 suppressed" in line.stdout


def test_markup_in_user_text_is_printed_literally(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text("services:\n  '[red]x[/]':\n    image: postgres:16\n")
    result = run_cli("lint", str(path))
    assert result.returncode == 1 and "[red]x[/]" in result.stdout


def test_environment_of_the_test_does_not_leak() -> None:
    assert "UNSET_THING" not in os.environ


def test_mutated_corpus_never_crashes(tmp_path: Path) -> None:
    """Seeded mutations of the corpus (a big run: CARGOHOLD_LINT_FUZZ=5000) end in findings or
    a UsageError, never another exception."""
    import random

    rounds = int(os.environ.get("CARGOHOLD_LINT_FUZZ", "150"))
    rng = random.Random(13)
    sources = [p.read_text() for p in FILES]
    pieces = [
        "${",
        "}",
        ":",
        "<<: *x",
        "&x",
        "*x",
        "- ",
        "  ",
        "\n",
        "{",
        "[",
        "'",
        '"',
        "\\",
        "extends: train",
        "volumes:",
        "- /a",
        "- .:/b:ro",
        "$(pwd)",
        "&&",
        "--output_dir",
    ]
    path = tmp_path / "compose.yml"
    for _ in range(rounds):
        text = list(rng.choice(sources))
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(text) + 1)
            if rng.random() < 0.5 and text:
                del text[at : at + rng.randint(1, 8)]
            else:
                text[at:at] = rng.choice(pieces)
        mutated = "".join(text)
        path.write_text(mutated)
        try:
            lint([path], [])
            lint_docker_run("docker run " + mutated[:300])
        except UsageError:
            pass


def test_rules_are_listed_from_the_registry() -> None:
    listed = json.loads(run_cli("lint", "--rules", "--json").stdout)
    assert [r["id"] for r in listed] == sorted(REGISTRY)
    assert all(r["description"] and r["summary"] for r in listed)
