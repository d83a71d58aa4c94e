"""A real S3-compatible server for tests: moto's, in a thread of the test process, on 127.0.0.1
and a free port. Clients reach it over HTTP exactly as they reach MinIO or AWS, through the
standard environment (``s3_env``), so a ``ctxvec`` subprocess needs nothing else.

moto keeps its buckets in process-wide state, so each test makes its own bucket (``new_bucket``).
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's S3 server; yield its endpoint URL; stop it when the block exits."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    """What a client (pyarrow, boto3, MLflow) needs to use the server: endpoint and
    credentials, as AWS's own environment variables."""
    return {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                        aws_secret_access_key="test", region_name="us-east-1")


def new_bucket(endpoint: str) -> str:
    """A fresh, empty bucket (names: lower case, 3-63 characters)."""
    name = f"ctxvec-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object key under ``prefix``, sorted (directory markers, ending in /, left out)."""
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", [])
                  if not o["Key"].endswith("/"))
