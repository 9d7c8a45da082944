"""Read a fleet through balena-sdk: three GETs (fleet with its tags, the rollout's releases, devices).

A device's reachability is its API heartbeat as well as is_online (the VPN): a device whose VPN is blocked
still polls the API and updates. update_status says when the supervisor refused a release.
"""

from __future__ import annotations

from collections.abc import Iterable

from balena import Balena

from fleet.rollout.model import Device, Observed, Release
from fleet.rollout.state import STATE_TAG
from fleet.spec.fleetspec import APP_TAG

TAGS = {"$select": ["tag_key", "value"]}
RELEASE_FIELDS = ["id", "commit", "status", "created_at", "is_invalidated"]


class FleetNotFound(LookupError):
    pass


def _nav(value: object) -> int | None:
    """A navigation as pinejs returns it: {'__id': N}, null, or an expanded list."""
    if isinstance(value, dict):
        return value.get("__id") or value.get("id")
    if isinstance(value, list):
        return value[0]["id"] if value else None
    return None


def _tags(rows: list[dict]) -> dict[str, str]:
    return {t["tag_key"]: t["value"] for t in rows}


def _release(r: dict) -> Release:
    return Release(r["id"], r["commit"], r["status"], r.get("created_at") or "", bool(r.get("is_invalidated")),
                   _tags(r.get("release_tag", [])))


def observe(sdk: Balena, slug: str, device_tag_keys: Iterable[str] = ()) -> Observed:
    from balena.exceptions import ApplicationNotFound

    try:
        app = sdk.models.application.get(slug, {
            "$select": ["id", "slug", "should_track_latest_release", "should_be_running__release"],
            "$expand": {"application_tag": TAGS, "should_be_running__release": {"$select": RELEASE_FIELDS}},
        })
    except ApplicationNotFound as exc:
        raise FleetNotFound(f"fleet {slug} not found (or this API key cannot see it)") from exc
    fleet_id = app["id"]
    # Only releases the rollout cares about: built with edgecv tags, or carrying a rollout state.
    releases = sdk.pine.get({"resource": "release", "options": {
        "$select": RELEASE_FIELDS,
        "$filter": {"belongs_to__application": fleet_id,
                    "release_tag": {"$any": {"$alias": "rt", "$expr": {"rt": {"tag_key": {"$in": [APP_TAG, STATE_TAG]}}}}}},
        "$expand": {"release_tag": TAGS},
        "$orderby": "created_at desc",
    }})
    rels = [_release(r) for r in releases]
    current = app.get("should_be_running__release") or []
    if current and current[0]["id"] not in {r.id for r in rels}:
        rels.append(_release(current[0]))
    device_opts: dict = {
        "$select": ["id", "uuid", "device_name", "is_online", "api_heartbeat_state", "update_status",
                    "is_pinned_on__release", "is_running__release"],
        "$filter": {"belongs_to__application": fleet_id},
    }
    keys = sorted(set(device_tag_keys))
    if keys:
        device_opts["$expand"] = {"device_tag": {**TAGS, "$filter": {"tag_key": {"$in": keys}}}}
    devices = sdk.pine.get({"resource": "device", "options": device_opts})
    return Observed(
        fleet_id=fleet_id,
        slug=app["slug"],
        tracks_latest=bool(app["should_track_latest_release"]),
        fleet_release=_nav(app.get("should_be_running__release")),
        releases=tuple(rels),
        devices=tuple(
            Device(d["id"], d["uuid"], d.get("device_name") or d["uuid"][:7], bool(d["is_online"]),
                   _nav(d["is_pinned_on__release"]), _nav(d["is_running__release"]), _tags(d.get("device_tag", [])),
                   d.get("api_heartbeat_state"), d.get("update_status"))
            for d in devices
        ),
        fleet_tags=_tags(app.get("application_tag", [])),
    )


def read_lease(sdk: Balena, slug: str, key: str) -> tuple[int, str | None]:
    """The fleet id and its lease tag, in one GET (before taking the lease)."""
    from balena.exceptions import ApplicationNotFound

    try:
        app = sdk.models.application.get(slug, {"$select": "id", "$expand": {
            "application_tag": {**TAGS, "$filter": {"tag_key": key}}}})
    except ApplicationNotFound as exc:
        raise FleetNotFound(f"fleet {slug} not found (or this API key cannot see it)") from exc
    tags = _tags(app.get("application_tag", []))
    return app["id"], tags.get(key)
