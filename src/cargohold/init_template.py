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
env = {{ SEED = "0" }}             # values are text: quote numbers
# secrets = ["HF_TOKEN", "WANDB_API_KEY"]   # taken from your environment, never written anywhere
# env_file = "./train.env"      # KEY=VALUE lines, read when the job starts
# gpus = "all"                  # or a count (2), or device ids/UUIDs (["0", "1"]); with GPUs the
#                               # job also gets memlock/stack ulimits for NCCL and a 1g shm
# ipc = "host"                  # host (then drop shm_size) | private | shareable
# ulimits = {{ nofile = 65536 }}  # or {{ soft = N, hard = M }}; -1 is unlimited
# stop_timeout = 120            # seconds from SIGTERM to SIGKILL (default 120 with checkpoints)
# init = true                   # default when the command is a shell: SIGTERM reaches Python
# resources = {{ cpus = 8, memory = "32g", pids_limit = 4096 }}
# devices = ["/dev/infiniband"]
# network = "none"              # default: Docker's bridge, so downloads work
# entrypoint = ["python3", "-u"]
# read_only = true              # read-only root file system; /tmp becomes a tmpfs
# hardening = false             # default true: no-new-privileges, unneeded capabilities dropped
"""


def init_spec_text(folder_name: str) -> str:
    """The template with a project name derived from the folder's name."""
    name = re.sub(r"[^a-z0-9_.-]+", "-", folder_name.lower()).strip("-._") or "project"
    return _TEMPLATE.format(name=name)
