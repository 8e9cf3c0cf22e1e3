"""Evidence about a service: what it runs, as whom, where, and which paths it reads or writes.

Rules decide from evidence, never from a substring: a path is an *output* because an argument
or a variable named for outputs points at it (``--output_dir /x``, ``output_dir=/x``,
``OUTPUT_DIR /x``, ``CHECKPOINT_DIR=/x``, a positional ``/x/checkpoints``); a mount is a
*dataset* because its path names a dataset or an input argument reads from it. Each piece of
evidence is a short text the finding carries, so a reader can judge it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from cargohold.lint._images import KnownImage, know
from cargohold.lint._model import Mount, Service, Text

__all__ = [
    "OUTPUT_PARTS",
    "PathUse",
    "image_facts",
    "looks_placeholder",
    "mount_for",
    "notebook_dir",
    "path_uses",
    "relative_unknown",
    "run_user",
    "workdir",
    "workload",
    "workload_words",
]

Use = Literal["output", "cache", "write", "input"]
Workload = Literal["training", "serving", "notebook", "tensorboard", "tracking", "prep", "unknown"]

_OUTPUT_NAMES = {
    "output_dir",
    "outdir",
    "out_dir",
    "output_path",
    "output_folder",
    "output_directory",
    "save_dir",
    "save_path",
    "save_folder",
    "save_directory",
    "savedir",
    "checkpoint_dir",
    "checkpoints_dir",
    "checkpoint_directory",
    "ckpt_save_dir",
    "save_checkpoint_dir",
    "checkpoint_save_dir",
    "checkpoint_save_path",
    "default_root_dir",
    "work_dir",
    "logging_dir",
    "log_dir",
    "logs_dir",
    "results_dir",
    "result_dir",
    "export_dir",
    "model_save_dir",
    "model_save_path",
    "save_model_dir",
    "output_model_dir",
    "exp_dir",
    "experiment_dir",
    "run_dir",
    "runs_dir",
    "dirpath",
    "output_root",
    "checkpoint_root",
    "save_root",
    "output",
    "save",
    "project",
    "weights_dir_out",
    "logdir",
    "log_path",
    "tensorboard_dir",
    "summary_dir",
    "model_dir",
    "out",
    "out_path",
    "output_file",
    "results_path",
    "save_model_path",
    "export_path",
    "model_output_dir",
    "model_output_path",
    "tensorboard_logdir",
    "checkpoints_path",
    "job_dir",  # TF/Keras, AI Platform trainers
    "storage_path",  # Ray Tune/Train RunConfig
    "local_dir",  # Ray Tune (older); a downloader's --local-dir is a download (cache)
    "tb_log_dir",
    "output_model",
    "workdir",  # Flax examples: only as a script's argument (not a tool's own --workdir)
}
_PATHLIKE_ONLY = {
    "output",
    "save",
    "project",
    "out",
    "output_file",
    "output_model",
}  # ambiguous names: only when the value is a path
# Names that are outputs only when their path names a checkpoints or outputs folder.
_NAMED_OUTPUTS = {"ckpt_dir", "ckpt_path"}
# Names that are outputs only as the argument of a script (`python main.py --workdir=/x`):
# elsewhere they are a tool's own option.
_SCRIPT_ONLY = {"workdir"}
_CACHE_NAMES = {
    "cache_dir",
    "download_dir",
    "hf_cache_dir",
    "model_cache_dir",
    "cache_path",
    "cache_folder",
    "hub_cache_dir",
    "cache_root",
    "download_root",
    "model_cache",
}
_INPUT_NAMES = {
    "data",
    "data_dir",
    "data_path",
    "data_root",
    "dataroot",
    "dataset_dir",
    "dataset_path",
    "dataset_root",
    "train_dir",
    "train_data",
    "train_data_dir",
    "train_file",
    "train_path",
    "train_data_path",
    "validation_file",
    "val_dir",
    "valid_dir",
    "val_data",
    "eval_data",
    "test_file",
    "test_dir",
    "images_dir",
    "image_dir",
    "img_dir",
    "data_folder",
    "corpus",
    "input_dir",
    "data_files",
    "imagenet_dir",
    "coco_dir",
    "train_data_files",
}
# Input names that say "some data", not "a dataset": a web UI's `--data-dir` is its state.
_GENERIC_INPUT = {
    "data", "data_dir", "data_path", "data_root", "dataroot", "data_folder", "input_dir",
}  # fmt: skip
_YACS = re.compile(r"^(?:[A-Z0-9_]+\.)*(OUTPUT_DIR|CHECKPOINT_DIR|SAVE_DIR|LOG_DIR)$")
_OUTPUT_ENV = re.compile(
    r"^(?:[A-Z0-9]+_)*(CHECKPOINTS?|OUTPUTS?|SAVE|RESULTS?|LOGS?|LOGGING|EXPORT|"
    r"ARTIFACTS?|EXPERIMENTS?)_(DIR|PATH|ROOT|FOLDER|DIRECTORY|LOCATION)$|"
    r"^(?:[A-Z0-9]+_)*(SAVE|OUTPUT|OUT)_CKPTS?_(DIR|PATH|ROOT|FOLDER|DIRECTORY)$|^WANDB_DIR$|"
    r"^SM_MODEL_DIR$|^SM_OUTPUT_DATA_DIR$"
)
_WRITE_ENV = re.compile(r"^(?:[A-Z0-9]+_)*(MODELS?|WEIGHTS)_(DIR|PATH|ROOT|FOLDER|HOME)$")
_CACHE_ENV = {
    "HF_HOME",
    "TRANSFORMERS_CACHE",
    "HF_DATASETS_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HUB_CACHE",
    "TORCH_HOME",
    "XDG_CACHE_HOME",
    "PIP_CACHE_DIR",
    "KERAS_HOME",
    "SENTENCE_TRANSFORMERS_HOME",
    "TFHUB_CACHE_DIR",
    "WANDB_CACHE_DIR",
    "VLLM_CACHE_ROOT",
    "OLLAMA_MODELS",
    "TORCHINDUCTOR_CACHE_DIR",
    "HF_ASSETS_CACHE",
}
_INPUT_ENV = re.compile(
    r"^(?:[A-Z0-9]+_)*(DATA|DATASETS?|TRAIN|TRAINING|CORPUS|IMAGENET|COCO)_(DIR|PATH|ROOT|FOLDER)$"
)
# Folders named for what a job writes: checkpoints and outputs.
OUTPUT_PARTS = {
    "checkpoints", "checkpoint", "ckpt", "ckpts", "outputs", "output", "results",
    "saved_models", "saved_model", "model_checkpoints",
}  # fmt: skip
_PLACEHOLDER = re.compile(
    r"(^|/)(path/to|your[_-]?\w*|my[_-]?(path|dir|folder|data)|absolute/path|abs/path|"
    r"some/path|local/path|host/path|<[^>]*>|x{3,}|\.\.\.|changeme|CHANGE_ME|"
    r"\w*_here)(/|$)|^/path(/|$)|^<|<.*>|\{\{",
    re.IGNORECASE,
)
_SCRIPT = re.compile(r"\.py$|^(torchrun|accelerate|deepspeed|composer)$|^python[\d.]*$")
_SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/bash", "zsh", "dash", "ash"}
_DROP_PRIVILEGES = re.compile(r"\b(gosu|su-exec|setpriv|runuser|s6-setuidgid|chpst)\b|su -c")


@dataclass(frozen=True)
class PathUse:
    """A path the service reads or writes, and why lint thinks so."""

    value: Text  # as written
    path: PurePosixPath | None  # absolute in the container; None when it cannot be known
    use: Use
    evidence: str
    # An input named only "data" (`--data-dir`, `DATA_PATH`): a dataset for a training job,
    # but as often an application's state folder.
    generic: bool = False


def looks_placeholder(value: str) -> bool:
    """``/path/to/data``, ``<your-dir>``, ``/your/folder``: an example, not a path."""
    return bool(_PLACEHOLDER.search(value))


def image_facts(service: Service) -> KnownImage | None:
    return know(service.image) if service.image and not service.image.unresolved else None


def _split(text: Text) -> list[Text]:
    """A shell string into words, its separators (``&&``, ``;``, ``|``) kept as words."""
    try:
        lexer = shlex.shlex(str(text), posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:
        words = str(text).split()
    return text.split_into(words)


def _separator(word: str) -> bool:
    return bool(word) and not word.strip(";&|")


def workload_words(service: Service) -> list[Text]:
    """What the container runs: entrypoint and command (the Dockerfile's when the service sets
    none), with ``sh -c "…"`` strings opened into words."""
    return [w for w in _command_words(service) if not _separator(w)]


def _simple_commands(service: Service) -> list[list[Text]]:
    """The words of each simple command (``a && b`` is two) the container runs."""
    commands: list[list[Text]] = [[]]
    for word in _command_words(service):
        if _separator(word):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def _command_words(service: Service) -> list[Text]:
    words = [*service.entrypoint, *service.command]
    if not service.command and not service.entrypoint and service.build:
        words = list(service.build.command)
    out: list[Text] = []
    for index, word in enumerate(words):
        previous = words[index - 1] if index else ""
        if (
            previous.lstrip("-") in ("c", "lc", "ic", "ec", "xc", "exc")
            and (
                (index >= 2 and words[index - 2] in _SHELLS) or (index == 1 and words[0] in _SHELLS)
            )
        ) or (" " in word and index == len(words) - 1 and len(words) == 1):
            out += _split(word)
        else:
            out.append(word)
    return out


def workdir(service: Service) -> tuple[str | None, str]:
    """The container's working directory and where that is known from."""
    words = workload_words(service)
    for index in range(len(words) - 2, -1, -1):
        if words[index] == "cd" and words[index + 1].startswith("/"):
            return str(words[index + 1]), f"`cd {words[index + 1]}` in the command"
    image_dir: str | None = None
    source = ""
    if service.build is not None and service.build.workdir:
        image_dir, source = service.build.workdir, "WORKDIR of the local Dockerfile"
    elif (known := image_facts(service)) is not None and known.workdir:
        image_dir, source = known.workdir, f"the working directory of {known.label} images"
    if service.working_dir and not service.working_dir.unresolved:
        own = str(service.working_dir)
        if own.startswith("/"):
            return own, f"working_dir {own}"
        if image_dir:
            return str(PurePosixPath(image_dir) / own), f"working_dir {own} in {source}"
        return None, ""
    return image_dir, source


_JUPYTER_APPS = {"lab", "notebook", "server", "nbclassic"}
_JUPYTER_BINS = {
    "jupyter-lab", "jupyter-notebook", "jupyter-server", "jupyter-nbclassic",
    "jupyterhub-singleuser", "start-notebook.sh", "start-notebook.py", "start-singleuser.sh",
    "start-singleuser.py",
}  # fmt: skip
_JUPYTER_MODULES = {"jupyterlab", "notebook", "jupyter_server", "nbclassic"}
_NOTEBOOK_DIR_FLAGS = {"notebook_dir", "root_dir"}  # --notebook-dir, --NotebookApp.notebook_dir,
# --ServerApp.root_dir, --ServerApp.notebook_dir


def _jupyter_at(command: list[Text], index: int) -> int | None:
    """Where the server's own arguments start, if ``command[index]`` starts a Jupyter server."""
    word = command[index]
    base = word.rsplit("/", 1)[-1]
    nxt = command[index + 1] if index + 1 < len(command) else ""
    if base in _JUPYTER_BINS:
        return index + 1
    if base == "jupyter" and nxt in _JUPYTER_APPS:
        return index + 2
    if word == "-m" and nxt in _JUPYTER_MODULES:
        return index + 2
    if word == "-m" and nxt == "jupyter" and index + 2 < len(command):
        return index + 3 if command[index + 2] in _JUPYTER_APPS else None
    return None


def notebook_dir(service: Service) -> tuple[str | None, str] | None:
    """When the service runs a Jupyter server anywhere in its command (``bash -c "pip install
    jupyterlab && jupyter lab …"`` too): the folder it serves notebooks from (None when it
    cannot be known) and the evidence. The folder is ``--notebook-dir``,
    ``--NotebookApp.notebook_dir`` or ``--ServerApp.root_dir``, else the working directory."""
    for command in _simple_commands(service):
        for index in range(len(command)):
            start = _jupyter_at(command, index)
            if start is None or any(w == "install" for w in command[:index]):
                continue
            server = " ".join(command[max(0, start - 2) : start])
            args = command[start:]
            for position, word in enumerate(args):
                flag, eq, inline = word.partition("=")
                if not word.startswith("-") or _norm(flag) not in _NOTEBOOK_DIR_FLAGS:
                    continue
                value = inline if eq else (args[position + 1] if position + 1 < len(args) else "")
                value = value.strip("\"'")
                if not value or "$" in value or looks_placeholder(value):
                    return None, f"{server} {word}"
                if value.startswith("/"):
                    return str(PurePosixPath(value)), f"{server} {flag}={value}"
                base, _ = workdir(service)
                if base is None or not re.fullmatch(r"[\w.@+/-]+", value):
                    return None, f"{server} {flag}={value}"
                return str(PurePosixPath(base) / value), f"{server} {flag}={value}"
            base, source = workdir(service)
            if base is None:
                return None, server
            return base, f"{server} serves its working directory {base} ({source})"
    return None


def relative_unknown(value: Text) -> bool:
    """A relative path (``./output``, ``runs/exp1``) that ``_resolve`` could not place only
    because the working directory is unknown."""
    text = str(value).strip().strip("\"'")
    if not text or value.unresolved or "://" in text or text.startswith(("~", "$", "-", "/")):
        return False
    return not looks_placeholder(text) and bool(re.fullmatch(r"[\w.@+/-]+", text))


def _resolve(value: Text, service: Service) -> PurePosixPath | None:
    text = str(value).strip().strip("\"'")
    if not text or value.unresolved or "://" in text or text.startswith(("~", "$", "-")):
        return None
    if looks_placeholder(text) or text.startswith(("/dev/", "/proc/")) or text == "/dev/null":
        return None
    if text.startswith("/"):
        return PurePosixPath(text)
    if not re.fullmatch(r"[\w.@+/-]+", text):
        return None
    base, _ = workdir(service)
    return PurePosixPath(base) / text if base else None


def _norm(flag: str) -> str:
    return flag.lstrip("-").lower().replace("-", "_").rsplit(".", 1)[-1]


def _pathlike(value: str) -> bool:
    return "/" in value or bool(re.search(r"\.(pt|pth|ckpt|bin|safetensors|h5|keras|onnx)$", value))


def _use_of(name: str, full: str) -> Use | None:
    if full.lower() in ("hydra.run.dir", "hydra.sweep.dir", "hydra.runtime.output_dir"):
        return "output"
    if name in _OUTPUT_NAMES:
        return "output"
    if name in _CACHE_NAMES:
        return "cache"
    if name in _INPUT_NAMES:
        return "input"
    return None


def path_uses(service: Service) -> list[PathUse]:
    """Every path the command line or the environment says the service reads or writes."""
    uses: list[PathUse] = []
    kind, _ = workload(service)
    words = workload_words(service)

    def add(value: Text, use: Use, evidence: str, name: str = "") -> None:
        if use == "output" and kind in ("tensorboard", "serving"):
            return  # `tensorboard --logdir` reads; servers' --output flags are not training data
        model_dir = evidence.lstrip("-").lower().startswith(("model_dir", "model-dir"))
        if use == "output" and model_dir and kind != "training":
            return  # a model folder is read by everything but a training job
        if name == "local_dir" and kind == "prep":
            use = "cache"  # `huggingface-cli download --local-dir`: a download, not an output
        generic = use == "input" and name in _GENERIC_INPUT
        uses.append(PathUse(value, _resolve(value, service), use, evidence, generic))

    def script_before(index: int) -> bool:
        return any(_SCRIPT.search(w) for w in words[:index])

    # Megatron writes its index-map caches beside --data-path unless --data-cache-path is set
    # (torchvision's references take a --data-path they only read: Megatron's own scripts only).
    megatron = (
        any(
            "megatron" in w.lower() or re.search(r"pretrain_(gpt|bert|t5|llama|mamba|retro)", w)
            for w in words
        )
        or "megatron" in str(service.image or "").lower()
    )
    cache_beside_data = megatron and not any(
        _norm(w.partition("=")[0]) == "data_cache_path" for w in words
    )
    for index, word in enumerate(words):
        nxt = words[index + 1] if index + 1 < len(words) else None
        if word.startswith("-"):
            flag, eq, inline = word.partition("=")
            name = _norm(flag)
            use = _use_of(name, flag.lstrip("-"))
            value = word.derive(inline) if eq else nxt
            # `--ckpt_dir` reads weights as often as it writes them (Meta's llama): an output
            # only when the path itself names a checkpoints folder.
            if (
                use is None
                and name in _NAMED_OUTPUTS
                and value is not None
                and {p.lower() for p in PurePosixPath(str(value)).parts} & OUTPUT_PARTS
            ):
                use = "output"
            if (
                name == "data_path"
                and cache_beside_data
                and kind == "training"
                and value is not None
                and not str(value).startswith("-")
            ):
                add(
                    value,
                    "write",
                    f"{flag} {value} (index caches are written beside it "
                    "without --data-cache-path)",
                )
            if use and value is not None and not (not eq and value.startswith("-")):
                if name in _PATHLIKE_ONLY and not _pathlike(value):
                    continue
                if name in _SCRIPT_ONLY and not script_before(index):
                    continue
                add(value, use, f"{flag} {value}", name)
            continue
        key, eq, value_text = word.partition("=")
        if eq and re.fullmatch(r"[+~]?[A-Za-z_][\w.]*", key):
            name = _norm(key.lstrip("+~"))
            use = _use_of(name, key.lstrip("+~"))
            if name in _SCRIPT_ONLY and not script_before(index):
                continue
            if use and not (name in _PATHLIKE_ONLY and not _pathlike(value_text)):
                add(word.derive(value_text), use, f"{key}={value_text}", name)
            continue
        if _YACS.match(word) and nxt is not None:
            add(nxt, "output", f"{word} {nxt}")
            continue
        if index and "/" in word and not re.search(r"\.(py|sh|ipynb|yaml|yml|json|toml)$", word):
            parts = {p.lower() for p in PurePosixPath(word).parts}
            hit = parts & (OUTPUT_PARTS | {"runs", "experiments"})
            previous = words[index - 1]
            # only a script's arguments: `ls /checkpoints` or `cp` read, `train.py … /ckpt` writes
            script = script_before(index)
            if hit and script and not previous.startswith("-") and not looks_placeholder(word):
                add(word, "output", f"positional argument {word} (a {sorted(hit)[0]} folder)")
    env = dict(service.build.env) if service.build else {}
    env.update(service.env)
    for name, value in env.items():
        if not value or value.unresolved:
            continue
        if name in _CACHE_ENV:
            add(value, "cache", f"{name}={value}")
        elif _OUTPUT_ENV.match(name):
            add(value, "output", f"{name}={value}")
        elif _WRITE_ENV.match(name):
            add(value, "write", f"{name}={value}")
        elif match := _INPUT_ENV.match(name):
            add(value, "input", f"{name}={value}", "data" if match.group(1) == "DATA" else "")
    return uses


_SERVING = re.compile(
    r"\b(vllm|text-generation-launcher|tritonserver|torchserve|tensorflow_model_server|uvicorn|"
    r"gunicorn|gradio|streamlit|ollama|serve|api_server|openai\.api_server|fastapi|flask|"
    r"text-embeddings-router|lmdeploy|sglang\.launch_server|llama-server|tgi)\b"
)
_TRAINING = re.compile(
    r"(torchrun|torch\.distributed|accelerate launch|deepspeed|(^|[\s/_-])train[\w-]*\.py|"
    r"finetun\w*|fine[_-]tun\w*|pretrain\w*|\bsft\b|run_(clm|mlm|glue|qa|ner|translation|"
    r"summarization|seq2seq|speech_recognition|image_classification|swag|plm|t5_mlm)\w*\.py|"
    r"train_net\.py|tools/train\.py|\btrain\b|\bfit\b|fairseq-train|llamafactory-cli|axolotl|"
    r"tune run|composer\s+\S+\.py|lightning|trainer|\.fit\(|horovodrun|mpirun)"
)
_PREP = re.compile(
    r"\b(download\w*|prepare\w*|preprocess\w*|prep_\w+|convert\w*|extract\w*|ingest\w*|"
    r"build_dataset|make_dataset|tokeniz\w*|scrape\w*|unzip|wget|curl|rsync|gsutil|aws s3)\b"
)


def workload(service: Service) -> tuple[Workload, str]:
    """What kind of work the service does, and the evidence."""
    words = workload_words(service)
    # Paths are not the workload: `--data /data/train` does not make an evaluation a training.
    text = " ".join(w for w in words if "/" not in w or w.endswith(".py")).lower()
    first = " ".join(words[:3]).lower()
    known = image_facts(service)
    if "tensorboard" in first or re.search(r"\btensorboard\s+--logdir", text):
        return "tensorboard", "runs tensorboard"
    if re.search(r"\bmlflow\s+(server|ui)\b", text):
        return "tracking", "runs mlflow server"
    if re.search(r"\bjupyter(-lab|-notebook)?\b|\bjupyterlab\b", first):
        return "notebook", "runs jupyter"
    if (notebook := notebook_dir(service)) is not None:
        return "notebook", notebook[1]
    if text and _SERVING.search(first):
        return "serving", f"runs {_SERVING.search(first).group()}"  # type: ignore[union-attr]
    if (
        known is not None
        and known.role in ("serving", "notebook", "tensorboard", "tracking")
        and not (text and _TRAINING.search(text))
    ):
        return known.role, f"image {service.image} ({known.label})"
    if text and _PREP.search(text) and not _TRAINING.search(text):
        return "prep", f"runs {_PREP.search(text).group()}"  # type: ignore[union-attr]
    if text and (match := _TRAINING.search(text)):
        return "training", f"runs {match.group().strip()}"
    return "unknown", ""


def run_user(service: Service) -> tuple[Literal["root", "non-root", "drops", "unknown"], str]:
    """Who the container's process runs as, and the evidence."""
    if service.user is not None:
        name = str(service.user).split(":")[0].strip()
        if name in ("root", "0") and not service.user.unresolved:
            return "root", f"user: {service.user}"
        return "non-root", f"user: {service.user}"
    entry = " ".join([*service.entrypoint, *(service.build.command if service.build else ())])
    if _DROP_PRIVILEGES.search(entry):
        return "drops", f"entrypoint {_DROP_PRIVILEGES.search(entry).group()}"  # type: ignore[union-attr]
    if service.build is not None and service.build.user is not None:
        user = service.build.user.split(":")[0]
        return ("root" if user in ("root", "0") else "non-root"), service.build.source
    known = image_facts(service)
    if known is not None:
        if known.user == "drops-privileges":
            return "drops", f"{known.label} images start as root and drop to their own user"
        return ("root" if known.user == "root" else "non-root"), (
            f"{known.label} images run as {'root' if known.user == 'root' else 'a non-root user'}"
        )
    return "unknown", ""


def mount_for(path: PurePosixPath, mounts: list[Mount]) -> Mount | None:
    """The mount ``path`` lies on (the deepest one), if any."""
    best: Mount | None = None
    for mount in mounts:
        if mount.target.unresolved or not mount.target.startswith("/"):
            continue
        if mount.holds(path) and (best is None or len(mount.path.parts) > len(best.path.parts)):
            best = mount
    return best
