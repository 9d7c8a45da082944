"""`edgecv review serve|demo|add-user|disable-user|enable-user|add-token|revoke-token|ingest-evidence|export`."""

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
@click.option("--login-address-max-failures", type=int, default=20, show_default=True,
              help="failed sign-ins from one client address within the window before it is refused (429)")
@click.option("--image-url-allow", multiple=True, envvar="EDGECV_REVIEW_IMAGE_URL_ALLOW",
              help="an evidence store items' image_url may point into (URL prefix; repeat). Default: none")
@click.option("--max-body-mb", type=float, default=16.0, show_default=True, help="POST /api/items body cap")
@click.option("--log-level", default="warning", show_default=True)
def serve(db, data_dir, host, port, evidence_root, classes, claim_minutes, secure_cookies, login_max_failures,
          login_window_minutes, login_address_max_failures, image_url_allow, max_body_mb, log_level) -> None:
    """Run the web app (migrates the database first)."""
    import uvicorn

    from fleet.review.storage import StorageError
    from fleet.review.web import create_app

    settings = _settings(db, data_dir, evidence_root, classes, claim_minutes=claim_minutes,
                         secure_cookies=secure_cookies, login_max_failures=login_max_failures,
                         login_window_minutes=login_window_minutes,
                         login_address_max_failures=login_address_max_failures,
                         image_url_allow=list(image_url_allow), max_body_bytes=int(max_body_mb * (1 << 20)))
    try:
        app = create_app(settings)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"edgecv review on http://{host}:{port} · database: {app.state.review.db.describe()} "
               f"· images: {settings.data_dir}", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


@review.command("demo")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("review-demo"),
              show_default=True, help="the demo's database, images and evidence")
@click.option("--seconds", type=float, default=30.0, show_default=True, help="how long the app pipeline runs")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--no-serve", is_flag=True, help="fill the queue and stop (the data stays for `edgecv review serve`)")
def demo(data_dir, seconds, port, no_serve) -> None:
    """Fill a local review service from the device app's own flagged items, then serve it."""
    from fleet.review.demo import fill_review_demo

    review_demo = fill_review_demo(data_dir, seconds, port, say=lambda m: click.echo(m, err=True))
    queued = ", ".join(f"{n} {r}" for r, n in sorted(review_demo.queued.items())) or "nothing"
    click.echo(f"queue: {queued}")
    click.echo(review_demo.login_line())
    if no_serve:
        review_demo.stop()
        return
    click.echo("serving until Ctrl-C", err=True)
    try:
        while review_demo.thread.is_alive():
            review_demo.thread.join(1)
    except KeyboardInterrupt:
        pass
    finally:
        review_demo.stop()


def _read_password(prompt: bool) -> str:
    """From the terminal (asked twice) or one line of stdin; an empty one is an error that says so."""
    if sys.stdin.isatty():
        return click.prompt("password", hide_input=True, confirmation_prompt=True)
    line = sys.stdin.readline().rstrip("\n")
    if not line:
        click.echo("error: no password: stdin is not a terminal and its first line is empty "
                   "(pipe the password in, or use --password / EDGECV_REVIEW_PASSWORD)", err=True)
        sys.exit(2)
    return line


@review.command("add-user")
@click.argument("username")
@db_option
@data_option
@click.option("--password", envvar="EDGECV_REVIEW_PASSWORD", help="default: prompt (or read from stdin)")
@click.option("--quota", type=int, help="items per day (new reviewers: 200)")
@click.option("--update", is_flag=True,
              help="change an existing reviewer: only what is given (--quota, --password or --new-password)")
@click.option("--new-password", is_flag=True, help="with --update: ask for a new password (or read it from stdin)")
def add_user(username, db, data_dir, password, quota, update, new_password) -> None:
    """Create a reviewer account (argon2-hashed password), or --update one."""
    from fleet.review.auth import AuthError, add_reviewer

    if password is None and (not update or new_password):
        password = _read_password(prompt=True)
    database = _db(_settings(db, data_dir))
    try:
        with database.write() as s:
            r = add_reviewer(s, username, password, quota if quota is not None or update else 200, database.now(),
                             update=update)
            quota_now = r.daily_quota
    except AuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    what = ("password changed, sessions ended; " if update and password is not None else "") if update else ""
    click.echo(f"reviewer {username} {'updated' if update else 'added'} ({what}quota {quota_now}/day)")


def _set_active(username: str, db, data_dir, active: bool) -> None:
    from fleet.review.auth import AuthError, set_active

    database = _db(_settings(db, data_dir))
    try:
        with database.write() as s:
            set_active(s, username, active)
    except AuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@review.command("disable-user")
@click.argument("username")
@db_option
@data_option
def disable_user(username, db, data_dir) -> None:
    """Stop a reviewer from signing in; their open sessions end at once (the audit log keeps their work)."""
    _set_active(username, db, data_dir, False)
    click.echo(f"reviewer {username} disabled; sessions ended")


@review.command("enable-user")
@click.argument("username")
@db_option
@data_option
def enable_user(username, db, data_dir) -> None:
    """Let a disabled reviewer sign in again."""
    _set_active(username, db, data_dir, True)
    click.echo(f"reviewer {username} enabled")


@review.command("add-token")
@click.argument("name")
@db_option
@data_option
@click.option("--any-device", is_flag=True,
              help="for an uploader relaying many devices' evidence; default: the token files items only as NAME")
def add_token(name, db, data_dir, any_device) -> None:
    """Make a device token for POST /api/items (printed once; replaces NAME's earlier token)."""
    from fleet.review.auth import add_device_token

    database = _db(_settings(db, data_dir))
    with database.write() as s:
        token = add_device_token(s, name, database.now(), any_device=any_device)
    click.echo(token)


@review.command("revoke-token")
@click.argument("name")
@db_option
@data_option
def revoke_token(name, db, data_dir) -> None:
    """Revoke NAME's device token: its requests are refused (401) from now on."""
    from fleet.review.auth import AuthError, revoke_device_token

    database = _db(_settings(db, data_dir))
    try:
        with database.write() as s:
            revoke_device_token(s, name)
    except AuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"token {name} revoked")


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
@click.option("--image-url-allow", multiple=True, envvar="EDGECV_REVIEW_IMAGE_URL_ALLOW",
              help="evidence stores image_url may be fetched from (as for serve)")
def export(db, data_dir, out, evidence_root, decisions, since, skip_missing, image_url_allow) -> None:
    """Write reviewed items as COCO JSON (OUT/corrections.json, OUT/images/) for `edgecv retrain export`."""
    from fleet.review.export import DECISIONS, ExportError, export_coco

    settings = _settings(db, data_dir, evidence_root, image_url_allow=list(image_url_allow))
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
