"""Remote sources and repositories by URL (s3://, gs://, …): one fsspec factory for ingest
(``volumes``) and the snapshot repositories above it, so that neither reaches upward."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["fsspec_filesystem"]


def fsspec_filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system and path of a URL; ``CARGOHOLD_S3_ENDPOINT`` points s3:// at
    any S3-compatible server (MinIO, Ceph radosgw, …)."""
    import fsspec

    options: dict[str, Any] = {}
    if url.startswith("s3://") and os.environ.get("CARGOHOLD_S3_ENDPOINT"):
        options["client_kwargs"] = {"endpoint_url": os.environ["CARGOHOLD_S3_ENDPOINT"]}
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, str(path)
