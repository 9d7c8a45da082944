"""A local S3 API (moto's server, in a thread) on 127.0.0.1 and a free port, for the demo's evidence store.

    with local_s3("edgecv-evidence") as url:   # http://127.0.0.1:PORT, the bucket made; None for no bucket
        ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from fleet.local.procs import free_port


@contextmanager
def local_s3(bucket: str | None, region: str = "us-east-1") -> Iterator[str | None]:
    if not bucket:
        yield None
        return
    import boto3
    from moto.server import ThreadedMotoServer

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
