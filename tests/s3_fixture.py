"""pytest plugin: a REAL S3 protocol endpoint for tests (moto's ThreadedMotoServer on loopback).

Use from a test module with ``pytest_plugins = ["tests.s3_fixture"]`` (in a top-level conftest)
or ``from tests.s3_fixture import s3_server, s3_bucket  # noqa: F401``.

- ``s3_server`` (session): starts the server on 127.0.0.1 and a free port, points the environment at
  it (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY = testing, AWS_DEFAULT_REGION,
  AFOV_S3_ENDPOINT removed) and restores every variable afterwards. Yields the endpoint URL.
  Start Ray only after it, so Ray workers inherit the environment.
- ``s3_bucket`` (function): a fresh empty bucket; yields ``"s3://<bucket>"``.

A moto server on 127.0.0.1 (docs/install.md "Running the tests").
"""

from __future__ import annotations

import logging
import socket
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    for name in ("werkzeug", "moto"):
        logging.getLogger(name).setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.delenv("AWS_SESSION_TOKEN", raising=False)
    mp.delenv("AFOV_S3_ENDPOINT", raising=False)
    mp.delenv("AWS_PROFILE", raising=False)
    try:
        yield endpoint
    finally:
        mp.undo()
        server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    from afov_ray.storage.uri import boto3_client

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3_client().create_bucket(Bucket=name)
    yield f"s3://{name}"
