"""A local S3 API (moto's server, in a thread) on 127.0.0.1 and a free port, for the demo's evidence store.

    with local_s3("edgecv-evidence") as url:   # http://127.0.0.1:PORT, the bucket made; None for no bucket
        ...
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleet.local.procs import free_port


@contextmanager
def local_s3(bucket: str | None, region: str = "us-east-1", log_path: Path | None = None) -> Iterator[str | None]:
    """The emulator's access log (one line per request, werkzeug's) goes to log_path (default: a file in
    the temp directory), not the console, where it would bury what the demo has to say."""
    if not bucket:
        yield None
        return
    import boto3
    from moto.server import ThreadedMotoServer

    access = logging.getLogger("werkzeug")
    handler = logging.FileHandler(log_path or Path(tempfile.gettempdir()) / "edgecv-local-s3.log")
    handler.setLevel(logging.INFO)
    saved = access.level, access.propagate
    access.addHandler(handler)  # werkzeug adds its own stderr handler only when it finds none
    access.setLevel(logging.INFO)
    access.propagate = False

    # The emulator takes any credentials; boto3 still wants some (real ones, if set, stay untouched).
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url, region_name=region).create_bucket(Bucket=bucket)
        yield url
    finally:
        server.stop()
        access.removeHandler(handler)
        handler.close()
        access.level, access.propagate = saved
