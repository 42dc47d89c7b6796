"""A real S3-compatible server on 127.0.0.1 for tests: moto's server mode in a subprocess.

Import the fixture into a test module (``from s3server import s3_server``); tests ask for
it as ``s3``. The
server speaks the S3 REST API over HTTP like any object store; the code under test reaches
it through the standard AWS environment variables only (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), which :func:`s3` sets
for the test session. boto3 (installed with ``moto[server]``) only fills the bucket: it
is the independent writer, never the reader under test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: Test-only credentials of the local server (moto accepts any pair).
ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key-not-a-real-one"
REGION = "us-east-1"
#: moto's server with atomic conditional writes (``tests/moto_s3.py``).
MOTO = Path(__file__).with_name("moto_s3.py")


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint and an environment that points clients at it."""

    endpoint: str
    env: dict[str, str]
    process: subprocess.Popen

    def client(self) -> Any:
        """A boto3 S3 client for this server (to fill buckets and count objects)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(endpoint: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll ``endpoint`` until the server answers HTTP (any status), or fail the tests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {process.returncode}")
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto server at {endpoint} did not answer within {timeout:.0f} s")


def server_env(endpoint: str) -> dict[str, str]:
    """The AWS variables that point S3 clients (pyarrow, GDAL, boto3) at ``endpoint``."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        # No EC2 metadata lookups (they would wait on a link-local address).
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="session", name="s3")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """Start moto's server (:data:`MOTO`) on a free 127.0.0.1 port for the session.

    The environment variables of :func:`server_env` are set while the server runs (the
    Spark workers of the session's local master inherit them) and restored afterwards.
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = Path(tmp_path_factory.mktemp("moto")) / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_up(endpoint, process)
    except RuntimeError as e:
        process.kill()
        pytest.fail(f"{e}; its log: {log.read_text()[-2000:]}")
    env = server_env(endpoint)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield S3Server(endpoint, env, process)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def upload_tree(client: Any, folder: Path, bucket: str, prefix: str) -> list[str]:
    """Upload every file under ``folder`` to ``s3://bucket/prefix/<relative path>``."""
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix.strip('/')}/{path.relative_to(folder).as_posix()}"
        client.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys
