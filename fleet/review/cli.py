"""`edgecv review serve|add-user|add-token|ingest-evidence|export`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from fleet.review.settings import DEFAULT_CLASSES, ReviewSettings

DATA_DIR = Path("review-data")


def _settings(db: str | None, data_dir: Path, evidence_root: Path | None = None, classes: str | None = None,
              **extra) -> ReviewSettings:
    fields = {"db_url": db or ReviewSettings.sqlite_url(data_dir), "data_dir": data_dir.resolve(),
              "evidence_root": evidence_root.resolve() if evidence_root else None, **extra}
    if classes:
        fields["classes"] = classes.split(",")
    try:
        return ReviewSettings(**fields)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _db(settings: ReviewSettings):
    from fleet.review.db import Database

    db = Database(settings.db_url, pool_size=2)
    db.migrate()
    return db


db_option = click.option("--db", envvar="EDGECV_REVIEW_DB", help="database URL (default: SQLite in --data-dir)")
data_option = click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=DATA_DIR,
                           envvar="EDGECV_REVIEW_DATA", show_default=True,
                           help="images and the default SQLite database")


@click.group()
def review() -> None:
    """The review service: a keyboard-first web queue of flagged items."""


@review.command()
@db_option
@data_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--evidence-root", type=click.Path(path_type=Path, file_okay=False, exists=True),
              envvar="EDGECV_EVIDENCE_ROOT", help="local evidence store (items may point into it)")
@click.option("--classes", default=",".join(DEFAULT_CLASSES), show_default=True,
              help="class palette, comma-separated: keys 1-9 pick them")
@click.option("--claim-minutes", type=float, default=10.0, show_default=True, help="claims expire after this")
@click.option("--secure-cookies/--no-secure-cookies", default=False, help="set behind HTTPS")
@click.option("--login-max-failures", type=int, default=5, show_default=True,
              help="failed sign-ins of one username within --login-window-minutes before it must wait")
@click.option("--login-window-minutes", type=float, default=15.0, show_default=True)
@click.option("--log-level", default="warning", show_default=True)
def serve(db, data_dir, host, port, evidence_root, classes, claim_minutes, secure_cookies, login_max_failures,
          login_window_minutes, log_level) -> None:
    """Run the web app (migrates the database first)."""
    import uvicorn

    from fleet.review.web import create_app

    settings = _settings(db, data_dir, evidence_root, classes, claim_minutes=claim_minutes,
                         secure_cookies=secure_cookies, login_max_failures=login_max_failures,
                         login_window_minutes=login_window_minutes)
    app = create_app(settings)
    click.echo(f"edgecv review on http://{host}:{port} ({app.state.review.db.dialect})", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


@review.command("add-user")
@click.argument("username")
@db_option
@data_option
@click.option("--password", envvar="EDGECV_REVIEW_PASSWORD", help="default: prompt (or read from stdin)")
@click.option("--quota", type=int, default=200, show_default=True, help="items per day")
@click.option("--update", is_flag=True, help="change the password / quota of an existing reviewer")
def add_user(username, db, data_dir, password, quota, update) -> None:
    """Create a reviewer account (argon2-hashed password)."""
    from fleet.review.auth import AuthError, add_reviewer

    if password is None:
        password = (sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty()
                    else click.prompt("password", hide_input=True, confirmation_prompt=True))
    database = _db(_settings(db, data_dir))
    try:
        with database.write() as s:
            add_reviewer(s, username, password, quota, database.now(), update=update)
    except AuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"reviewer {username} {'updated' if update else 'added'} (quota {quota}/day)")


@review.command("add-token")
@click.argument("name")
@db_option
@data_option
def add_token(name, db, data_dir) -> None:
    """Make a device token for POST /api/items (printed once; replaces NAME's earlier token)."""
    from fleet.review.auth import add_device_token

    database = _db(_settings(db, data_dir))
    with database.write() as s:
        token = add_device_token(s, name, database.now())
    click.echo(token)


@review.command("ingest-evidence")
@click.argument("packages", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--url", required=True, help="the review service, e.g. http://review.internal:8080")
@click.option("--token", envvar="EDGECV_REVIEW_TOKEN", required=True, help="device token (edgecv review add-token)")
@click.option("--evidence-root", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="the store the service reads clips from (as its --evidence-root); sets clip_path")
@click.option("--reason", type=click.Choice(["alert", "drift", "low_confidence", "random"]), default="alert",
              show_default=True)
def ingest_evidence(packages, url, token, evidence_root, reason) -> None:
    """Queue evidence packages (event.json + clip.mp4) for review; sending one again changes nothing."""
    import requests

    from fleet.review.evidence import PackageError, item_from_package, post_item

    failed = 0
    with requests.Session() as http:
        for package in packages:
            try:
                answer = post_item(http, url, token, item_from_package(package, evidence_root, reason))
            except (PackageError, OSError) as exc:
                failed += 1
                click.echo(f"error: {exc}", err=True)
                continue
            click.echo(f"{answer['id']}: {'queued' if answer['created'] else 'already queued'}")
    sys.exit(1 if failed else 0)


@review.command("export")
@db_option
@data_option
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--evidence-root", type=click.Path(path_type=Path, file_okay=False, exists=True),
              envvar="EDGECV_EVIDENCE_ROOT")
@click.option("--decision", "decisions", multiple=True, type=click.Choice(["approved", "corrected", "rejected"]),
              help="which decisions to export (repeat; default all)")
@click.option("--since", type=click.DateTime(), help="only items decided since (UTC)")
@click.option("--skip-missing", is_flag=True, help="export the rest when some images are gone")
def export(db, data_dir, out, evidence_root, decisions, since, skip_missing) -> None:
    """Write reviewed items as COCO JSON (OUT/corrections.json, OUT/images/) for `edgecv retrain export`."""
    from fleet.review.export import DECISIONS, ExportError, export_coco

    settings = _settings(db, data_dir, evidence_root)
    ts = since.replace(tzinfo=UTC).timestamp() if since else None
    try:
        summary = export_coco(_db(settings), settings, out, tuple(decisions) or DECISIONS, ts, skip_missing)
    except ExportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for line in summary["missing"]:
        click.echo(f"warning: skipped {line}", err=True)
    click.echo(f"wrote {summary['path']}: {summary['images']} images, {summary['annotations']} annotations "
               f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n"
               f"next: edgecv retrain export --corrections {out}/corrections.json --images {out}/images --out DATASET")
