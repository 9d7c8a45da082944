"""`edgecv evidence export EVENT_ID`: one event's JSON + MP4 (+ thumbnail) as a zip for MES/ERP or analysts."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import click


@click.group()
def evidence() -> None:
    """Evidence packages (clip + event.json) written by the device app."""


@evidence.command("export")
@click.argument("event_id")
@click.option("--dir", "root", type=click.Path(path_type=Path), default=Path("/var/lib/edgecv/evidence"),
              show_default=True, help="local evidence directory")
@click.option("--bucket", help="fetch from this evidence-store bucket instead of the local directory")
@click.option("--prefix", default="", help="key prefix in the bucket (site/device)")
@click.option("--endpoint-url", help="S3 endpoint (for S3-compatible stores)")
@click.option("--out", type=click.Path(path_type=Path), help="zip to write (default EVENT_ID.zip)")
def export(event_id: str, root: Path, bucket: str | None, prefix: str, endpoint_url: str | None,
           out: Path | None) -> None:
    """Bundle one event into a zip: event.json, clip.mp4, thumbnail.jpg."""
    if "/" in event_id or event_id.startswith("."):
        click.echo(f"error: invalid event id {event_id!r}", err=True)
        sys.exit(2)
    out = out or Path(f"{event_id}.zip")
    names = ("event.json", "clip.mp4", "thumbnail.jpg")
    if bucket:
        import boto3
        from botocore.exceptions import ClientError

        s3 = boto3.client("s3", endpoint_url=endpoint_url)
        key = f"{prefix.strip('/')}/{event_id}" if prefix else event_id
        try:
            blobs = {n: s3.get_object(Bucket=bucket, Key=f"{key}/{n}")["Body"].read() for n in names}
        except ClientError as exc:
            click.echo(f"error: event {event_id} not found in s3://{bucket}/{key}: {exc}", err=True)
            sys.exit(1)
    else:
        package = root / event_id
        missing = [n for n in names if not (package / n).is_file()]
        if missing:
            click.echo(f"error: event {event_id} not found or incomplete in {root} (missing {missing})", err=True)
            sys.exit(1)
        blobs = {n: (package / n).read_bytes() for n in names}
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in blobs.items():
            z.writestr(f"{event_id}/{name}", data)
    click.echo(f"wrote {out}")
