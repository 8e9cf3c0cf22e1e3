"""The commented ``cargohold.toml`` that ``cargohold init`` writes."""

from __future__ import annotations

import re

__all__ = ["init_spec_text"]

_TEMPLATE = """\
# cargohold.toml: where each kind of ML data lives, so that none of it dies with a container.
# `cargohold plan` shows every choice with its reason; paths are relative to this file.

[project]
name = "{name}"                 # prefix of volume and container names

[stores.dataset]
kind = "dataset"                # dataset | checkpoints | artifacts | cache | scratch
source = "./data"               # a host folder: bind mount (read-only for datasets)
target = "/data"                # where the job sees it

[stores.checkpoints]
kind = "checkpoints"            # no source: a named volume "{name}-checkpoints" that outlives
target = "/ckpt"                # every container; the job finds it in $CARGOHOLD_CHECKPOINT_DIR

[stores.models]
kind = "artifacts"
source = "./artifacts"          # created for you, owned by you
target = "/artifacts"

[stores.cache]
kind = "cache"                  # one volume shared by all jobs: HF_HOME, TORCH_HOME, pip cache
target = "/cache"

# [stores.tmp]
# kind = "scratch"              # tmpfs: fast, and gone when the job ends
# target = "/scratch"
# size = "2g"

[jobs.train]
image = "{name}-train"
build = "."                     # build ./Dockerfile; start it with
                                # `ARG BASE_IMAGE=python:3.11-slim` and `FROM ${{BASE_IMAGE}}`
                                # to build without a registry
command = ["python3", "train.py"]
# user = "host"                 # default: your uid:gid; or "root", or "UID:GID"
shm_size = "1g"                 # PyTorch DataLoader workers need more than Docker's 64 MB
restart = {{ max = 3 }}           # restart on failure, resuming from the latest checkpoint
env = {{ SEED = "0" }}
"""


def init_spec_text(folder_name: str) -> str:
    """The template with a project name derived from the folder's name."""
    name = re.sub(r"[^a-z0-9_.-]+", "-", folder_name.lower()).strip("-._") or "project"
    return _TEMPLATE.format(name=name)
