"""What lint knows about well-known images: what they are, who they run as, where they keep state.

An image's role is evidence: a database's data directory is state, not a training dataset; a
serving image reads its models; a Jupyter image runs as ``jovyan``. An image that is neither
here nor built from a local Dockerfile is *unknown*, and rules that would need its user or
working directory stay silent about it (and the report says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["KnownImage", "Role", "know", "repository"]

Role = Literal[
    "database",  # keeps state in data_dirs
    "object-store",
    "vector-db",
    "tracking",  # MLflow and friends: metadata + artifacts
    "labelling",
    "web-ui",
    "notebook",
    "serving",  # reads models, may download them into a cache
    "tensorboard",
    "training",  # a framework base image: jobs run on it
    "infra",  # proxies, dashboards, agents that need the engine
]
User = Literal["root", "non-root", "drops-privileges"]


@dataclass(frozen=True)
class KnownImage:
    """Facts about one family of images."""

    role: Role
    user: User
    data_dirs: tuple[str, ...] = ()  # any one of them on a mount keeps the state
    cache_dirs: tuple[str, ...] = ()
    workdir: str | None = None
    data_env: str | None = None  # an env var that moves the data directory
    label: str = ""


def repository(image: str) -> str:
    """``registry/org/name:tag@digest`` → ``org/name`` (lower case, no ``library/``)."""
    name = image.strip().lower().split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: len(name) - len(last[-1])] + last[-1].split(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if parts and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


def _tag(image: str) -> str:
    last = image.strip().lower().split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


_PG = KnownImage(
    "database",
    "drops-privileges",
    ("/var/lib/postgresql/data",),
    data_env="PGDATA",
    label="PostgreSQL",
)
_MYSQL = KnownImage("database", "drops-privileges", ("/var/lib/mysql",), label="MySQL/MariaDB")
_ES = KnownImage("database", "non-root", ("/usr/share/elasticsearch/data",), label="Elasticsearch")

# Matched on the repository (no registry, no tag), most specific first.
_KNOWN: list[tuple[re.Pattern[str], KnownImage]] = [
    (re.compile(p), k)
    for p, k in [
        (
            r"^(postgres|postgis/postgis|pgvector/pgvector|ankane/pgvector|timescale/timescaledb"
            r"(-ha)?|supabase/postgres)$",
            _PG,
        ),
        (
            r"^bitnami/postgresql",
            KnownImage("database", "non-root", ("/bitnami/postgresql",), label="PostgreSQL"),
        ),
        (r"^(mysql|mariadb|percona|mysql/mysql-server)$", _MYSQL),
        (
            r"^bitnami/(mysql|mariadb)$",
            KnownImage(
                "database",
                "non-root",
                ("/bitnami/mysql", "/bitnami/mariadb"),
                label="MySQL/MariaDB",
            ),
        ),
        (
            r"^(mongo|mongodb/mongodb-community-server)$",
            KnownImage("database", "drops-privileges", ("/data/db",), label="MongoDB"),
        ),
        (
            r"^bitnami/mongodb$",
            KnownImage("database", "non-root", ("/bitnami/mongodb",), label="MongoDB"),
        ),
        (r"^(elasticsearch|elasticsearch/elasticsearch)$", _ES),
        (
            r"^opensearchproject/opensearch$",
            KnownImage("database", "non-root", ("/usr/share/opensearch/data",), label="OpenSearch"),
        ),
        (
            r"^(clickhouse/clickhouse-server|yandex/clickhouse-server|clickhouse)$",
            KnownImage(
                "database", "drops-privileges", ("/var/lib/clickhouse",), label="ClickHouse"
            ),
        ),
        (
            r"^influxdb$",
            KnownImage(
                "database",
                "drops-privileges",
                ("/var/lib/influxdb2", "/var/lib/influxdb"),
                label="InfluxDB",
            ),
        ),
        (r"^neo4j$", KnownImage("database", "drops-privileges", ("/data",), label="Neo4j")),
        (
            r"^(minio/minio|bitnami/minio)$",
            KnownImage("object-store", "root", ("/data", "/bitnami/minio/data"), label="MinIO"),
        ),
        (r"^qdrant/qdrant$", KnownImage("vector-db", "root", ("/qdrant/storage",), label="Qdrant")),
        (
            r"^milvusdb/milvus$",
            KnownImage("vector-db", "root", ("/var/lib/milvus",), label="Milvus"),
        ),
        (
            r"^(semitechnologies/weaviate|weaviate)$",
            KnownImage(
                "vector-db",
                "root",
                ("/var/lib/weaviate",),
                data_env="PERSISTENCE_DATA_PATH",
                label="Weaviate",
            ),
        ),
        (
            r"^(chromadb/chroma|chroma-core/chroma)$",
            KnownImage(
                "vector-db",
                "root",
                ("/chroma/chroma", "/data", "/chroma"),
                data_env="PERSIST_DIRECTORY",
                label="Chroma",
            ),
        ),
        (
            r"^(heartexlabs|humansignal)/label-studio$",
            KnownImage("labelling", "non-root", ("/label-studio/data",), label="Label Studio"),
        ),
        (
            r"^open-webui/open-webui$",
            KnownImage("web-ui", "root", ("/app/backend/data",), label="Open WebUI"),
        ),
        (r"^mlflow/mlflow$", KnownImage("tracking", "root", label="MLflow")),
        (r"^doccano/doccano$", KnownImage("labelling", "root", ("/data",), label="doccano")),
        (r"^cvat/server$", KnownImage("labelling", "root", ("/home/django/data",), label="CVAT")),
        (r"^wandb/local$", KnownImage("tracking", "root", ("/vol",), label="W&B Server")),
        (
            r"^mintplexlabs/anythingllm$",
            KnownImage("web-ui", "non-root", ("/app/server/storage",), label="AnythingLLM"),
        ),
        (
            r"^flowiseai/flowise$",
            KnownImage("web-ui", "root", ("/root/.flowise",), label="Flowise"),
        ),
        (r"^n8nio/n8n$", KnownImage("web-ui", "non-root", ("/home/node/.n8n",), label="n8n")),
        (
            r"^(jupyter|quay.io/jupyter|jupyterhub)/",
            KnownImage(
                "notebook", "non-root", ("/home/jovyan",), workdir="/home/jovyan", label="Jupyter"
            ),
        ),
        (
            r"^(vllm/vllm-openai|vllm/vllm)",
            KnownImage(
                "serving",
                "root",
                cache_dirs=("/root/.cache/huggingface",),
                workdir="/vllm-workspace",
                label="vLLM",
            ),
        ),
        (
            r"^huggingface/text-generation-inference$",
            KnownImage("serving", "root", cache_dirs=("/data",), label="text-generation-inference"),
        ),
        (
            r"^huggingface/text-embeddings-inference$",
            KnownImage("serving", "root", cache_dirs=("/data",), label="text-embeddings-inference"),
        ),
        (
            r"^ollama/ollama$",
            KnownImage("serving", "root", cache_dirs=("/root/.ollama",), label="Ollama"),
        ),
        (r"^(nvidia/tritonserver|tritonserver)$", KnownImage("serving", "root", label="Triton")),
        (r"^tensorflow/serving$", KnownImage("serving", "root", label="TF Serving")),
        (r"^pytorch/torchserve$", KnownImage("serving", "non-root", label="TorchServe")),
        (
            r"^(pytorch/pytorch|nvidia/pytorch)$",
            KnownImage("training", "root", workdir="/workspace", label="PyTorch"),
        ),
        (
            r"^(huggingface/transformers-pytorch|huggingface/transformers-all|"
            r"huggingface/accelerate|rocm/pytorch|anibali/pytorch|nvidia/cuda|nvidia/nemo|"
            r"nvidia/tensorflow|deepspeed/deepspeed|pytorchlightning/pytorch_lightning)",
            KnownImage("training", "root", label="training base"),
        ),
        (r"^tensorflow/tensorflow$", KnownImage("training", "root", label="TensorFlow")),
        (
            r"^(python|ubuntu|debian|alpine|continuumio/miniconda3|continuumio/anaconda3|"
            r"condaforge/miniforge3)$",
            KnownImage("training", "root", workdir="/", label="base OS"),
        ),
        (r"^mambaorg/micromamba$", KnownImage("training", "non-root", label="micromamba")),
        (
            r"^(traefik|portainer/portainer(-ce|-ee)?|containrrr/watchtower|"
            r"gcr.io/cadvisor/cadvisor|cadvisor/cadvisor|google/cadvisor|nginxproxy/nginx-proxy|"
            r"jwilder/nginx-proxy|amir20/dozzle|docker|willfarrell/autoheal|netdata/netdata|"
            r"gitlab/gitlab-runner|myoung34/github-runner|tecnativa/docker-socket-proxy|"
            r"nginxproxy/docker-gen|jwilder/docker-gen)$",
            KnownImage("infra", "root", label="engine tool"),
        ),
        (r"^(grafana/grafana(-oss)?)$", KnownImage("infra", "non-root", label="Grafana")),
        (
            r"^(coreos/etcd|etcd-development/etcd|bitnami/etcd)$",
            KnownImage("infra", "root", label="etcd"),
        ),
        (r"^apache/airflow$", KnownImage("infra", "non-root", label="Airflow")),
        (r"^(prom/prometheus)$", KnownImage("infra", "non-root", label="Prometheus")),
        (
            r"^(nginx|httpd|caddy|redis|rabbitmq|memcached|busybox)$",
            KnownImage("infra", "root", label="service"),
        ),
    ]
]

_JUPYTER_TAG = re.compile(r"jupyter")


def know(image: str) -> KnownImage | None:
    """Facts about ``image``, or None when lint does not know it."""
    name = repository(image)
    if not name:
        return None
    for pattern, facts in _KNOWN:
        if pattern.search(name):
            if name == "tensorflow/tensorflow" and _JUPYTER_TAG.search(_tag(image)):
                return KnownImage("notebook", "root", ("/tf",), workdir="/tf", label="TF Jupyter")
            if name == "qdrant/qdrant" and "unprivileged" in _tag(image):
                return KnownImage("vector-db", "non-root", facts.data_dirs, label="Qdrant")
            if name.startswith("bitnami/") and facts.user != "non-root":
                continue
            return facts
    if name.startswith("bitnami/"):
        return KnownImage("infra", "non-root", label="Bitnami")
    return None
