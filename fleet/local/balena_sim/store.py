"""The double's data: fleets (applications), releases, devices and their tags, with balena's server rules.

Only the fields and navigations the rollout controller and the SDK calls behind it use. Records are plain
dicts; a navigation is stored as the target id. Server rules enforced (open-balena-api's model and hooks,
see shared/notes/balena-api.md):
- a device may be pinned to a release that succeeded and belongs to its fleet, invalidated or not; a fleet
  only to a successful, valid one (else 400); moving a device to another fleet clears its pin;
- after any release PATCH, a fleet that tracks latest targets its newest valid release (by start time):
  invalidating its release is an implicit rollback;
- a release is deleted only when no device and no fleet is pinned to it (400 otherwise);
- tag keys: unique per parent (409); no whitespace, no `io.balena.` prefix, at most 164 characters on a
  release, 100 elsewhere; a device tag value at most 10,000 characters (400).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleet.local.balena_sim.odata import BoolOp, Compare, In, Lambda, Literal, Not, ODataError, Options, Path


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Nav:
    target: str  # resource the id points at
    computed: bool = False


@dataclass(frozen=True)
class Reverse:
    source: str  # resource holding the pointer
    via: str  # its navigation field


# resource -> own fields, navigations (stored ids), reverse navigations (collections), writable fields.
SCHEMA: dict[str, dict[str, Any]] = {
    "application": {
        "fields": {"id", "app_name", "slug", "uuid", "should_track_latest_release", "created_at", "is_host"},
        "navs": {"should_be_running__release": Nav("release")},
        "reverse": {
            "owns__device": Reverse("device", "belongs_to__application"),
            "owns__release": Reverse("release", "belongs_to__application"),
            "application_tag": Reverse("application_tag", "application"),
        },
        "writable": {"should_be_running__release", "should_track_latest_release", "app_name"},
    },
    "release": {
        "fields": {
            "id", "commit", "status", "created_at", "start_timestamp", "is_final", "is_invalidated",
            "is_passing_tests", "raw_version", "semver", "note",
        },
        "navs": {"belongs_to__application": Nav("application")},
        "reverse": {"release_tag": Reverse("release_tag", "release")},
        "writable": {"is_invalidated", "note", "is_passing_tests", "status"},
    },
    "device": {
        "fields": {
            "id", "uuid", "device_name", "is_online", "api_heartbeat_state", "last_connectivity_event",
            "update_status", "created_at", "note", "status",
        },
        "navs": {
            "belongs_to__application": Nav("application"),
            "is_pinned_on__release": Nav("release"),
            "is_running__release": Nav("release"),
            "should_be_running__release": Nav("release", computed=True),
        },
        "reverse": {"device_tag": Reverse("device_tag", "device")},
        "writable": {"is_pinned_on__release", "device_name", "note", "belongs_to__application"},
    },
    "device_tag": {"fields": {"id", "tag_key", "value"}, "navs": {"device": Nav("device")}, "reverse": {},
                   "writable": {"value"}},
    "application_tag": {"fields": {"id", "tag_key", "value"}, "navs": {"application": Nav("application")},
                        "reverse": {}, "writable": {"value"}},
    "release_tag": {"fields": {"id", "tag_key", "value"}, "navs": {"release": Nav("release")}, "reverse": {},
                    "writable": {"value"}},
}
TAG_PARENT = {"device_tag": "device", "application_tag": "application", "release_tag": "release"}
TAG_KEY_MAX = {"release_tag": 164, "device_tag": 100, "application_tag": 100}
DEVICE_TAG_VALUE_MAX = 10_000


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Store:
    """In-memory tables; not thread-safe by itself (the server holds a lock around each request)."""

    def __init__(self, first_id: int = 1000) -> None:
        self.tables: dict[str, dict[int, dict]] = {name: {} for name in SCHEMA}
        self._ids = itertools.count(first_id)  # balena-cloud's ids have 7-8 digits: URLs grow with them
        # device id -> [(release id or None, who)]: every pin change, for "pinned twice?" checks.
        self.pin_history: dict[int, list[tuple[int | None, str]]] = {}
        self._children: dict[tuple[str, int], set[int]] = {}  # (resource, parent id) -> ids, for reverse navs

    # ------------------------------------------------------------ seeding (the "dashboard" side)

    def add_application(self, slug: str, **fields: Any) -> dict:
        rec = {"app_name": slug.split("/")[-1], "slug": slug.lower(), "uuid": f"{next(self._ids):032x}",
               "should_track_latest_release": False, "should_be_running__release": None, "is_host": False,
               "created_at": now_iso(), **fields}
        return self._insert("application", rec)

    def add_release(self, app_id: int, commit: str, status: str = "success", tags: dict | None = None,
                    **fields: Any) -> dict:
        stamp = now_iso()
        rec = {"commit": commit, "status": status, "created_at": stamp, "start_timestamp": stamp, "is_final": True,
               "is_invalidated": False, "is_passing_tests": True, "raw_version": None, "semver": "0.0.0",
               "note": None, "belongs_to__application": app_id, **fields}
        rel = self._insert("release", rec)
        for k, v in (tags or {}).items():
            self._insert("release_tag", {"release": rel["id"], "tag_key": k, "value": v})
        self.retarget(app_id)
        return rel

    def add_device(self, app_id: int, uuid: str, running: int | None = None, online: bool = True,
                   tags: dict | None = None, **fields: Any) -> dict:
        rec = {"uuid": uuid, "device_name": fields.pop("device_name", uuid[:7]), "is_online": online,
               "api_heartbeat_state": "online" if online else "offline", "last_connectivity_event": now_iso(),
               "update_status": None, "created_at": now_iso(), "note": None, "status": "Idle",
               "belongs_to__application": app_id, "is_pinned_on__release": None,
               "is_running__release": running, **fields}
        dev = self._insert("device", rec)
        for k, v in (tags or {}).items():
            self._insert("device_tag", {"device": dev["id"], "tag_key": k, "value": v})
        return dev

    def _insert(self, resource: str, rec: dict) -> dict:
        rec = {"id": next(self._ids), **rec}
        self.tables[resource][rec["id"]] = rec
        for nav in SCHEMA[resource]["navs"]:
            if rec.get(nav) is not None:
                self._children.setdefault((resource + "." + nav, rec[nav]), set()).add(rec["id"])
        return rec

    def _delete(self, resource: str, rid: int) -> None:
        rec = self.tables[resource].pop(rid)
        for nav in SCHEMA[resource]["navs"]:
            if rec.get(nav) is not None:
                self._children.get((resource + "." + nav, rec[nav]), set()).discard(rid)

    def _set_nav(self, resource: str, rec: dict, nav: str, value: int | None) -> None:
        old = rec.get(nav)
        if old is not None:
            self._children.get((resource + "." + nav, old), set()).discard(rec["id"])
        rec[nav] = value
        if value is not None:
            self._children.setdefault((resource + "." + nav, value), set()).add(rec["id"])

    # ------------------------------------------------------------ reading

    def value(self, resource: str, rec: dict, name: str) -> Any:
        """A field, or a navigation's id (computed ones included)."""
        if resource == "device" and name == "should_be_running__release":
            if rec["is_pinned_on__release"] is not None:
                return rec["is_pinned_on__release"]
            return self.tables["application"][rec["belongs_to__application"]]["should_be_running__release"]
        return rec.get(name)

    def children(self, resource: str, rec: dict, rev: Reverse) -> list[dict]:
        ids = self._children.get((rev.source + "." + rev.via, rec["id"]), set())
        table = self.tables[rev.source]
        return [table[i] for i in sorted(ids)]

    def query(self, resource: str, opts: Options, key: dict | None = None) -> list[dict]:
        table = self.tables[resource]
        if key and set(key) == {"id"}:
            rows = [table[key["id"]]] if key["id"] in table else []
        else:
            rows = list(table.values())
            if key:
                rows = [r for r in rows if all(self.value(resource, r, k) == v for k, v in key.items())]
        if opts.filter is not None:
            rows = [r for r in rows if self.matches(resource, r, opts.filter, {})]
        for name, desc in reversed(opts.orderby):
            self._check_field(resource, name)
            rows.sort(key=lambda r, n=name: (self.value(resource, r, n) is not None, self.value(resource, r, n) or 0),
                      reverse=desc)
        rows = rows[opts.skip :]
        if opts.top is not None:
            rows = rows[: opts.top]
        return rows

    def render(self, resource: str, rec: dict, opts: Options) -> dict:
        schema = SCHEMA[resource]
        names = opts.select or sorted(schema["fields"] | set(schema["navs"]))
        out: dict[str, Any] = {}
        for name in names:
            self._check_field(resource, name)
            if name in schema["navs"]:
                target = self.value(resource, rec, name)
                out[name] = None if target is None else {"__id": target}
            elif name in schema["fields"]:
                out[name] = rec.get(name)
            else:
                raise ODataError(f"'{name}' cannot be selected on {resource} (expand it)")
        for name, sub in opts.expand.items():
            if name in schema["navs"]:
                target_res = schema["navs"][name].target
                tid = self.value(resource, rec, name)
                rows = [self.tables[target_res][tid]] if tid is not None else []
            elif name in schema["reverse"]:
                rev = schema["reverse"][name]
                target_res = rev.source
                rows = self.children(resource, rec, rev)
            else:
                raise ODataError(f"{resource} has no navigation '{name}'")
            if sub.filter is not None:
                rows = [r for r in rows if self.matches(target_res, r, sub.filter, {})]
            for oname, desc in reversed(sub.orderby):
                rows.sort(key=lambda r, n=oname, t=target_res: str(self.value(t, r, n)), reverse=desc)
            rows = rows[sub.skip :][: sub.top] if sub.top is not None else rows[sub.skip :]
            out[name] = [self.render(target_res, r, sub) for r in rows]
        return out

    def _check_field(self, resource: str, name: str) -> None:
        s = SCHEMA[resource]
        if name not in s["fields"] and name not in s["navs"] and name not in s["reverse"]:
            raise ODataError(f"{resource} has no field '{name}'")

    # ------------------------------------------------------------ filter evaluation

    def matches(self, resource: str, rec: dict, node: Any, scope: dict[str, tuple[str, dict]]) -> bool:
        return bool(self._eval(resource, rec, node, scope))

    def _eval(self, resource: str, rec: dict, node: Any, scope: dict) -> Any:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Path):
            return self._path(resource, rec, node.parts, scope)
        if isinstance(node, BoolOp):
            results = (self._eval(resource, rec, n, scope) for n in node.items)
            return all(results) if node.op == "and" else any(results)
        if isinstance(node, Not):
            return not self._eval(resource, rec, node.item, scope)
        if isinstance(node, In):
            left = self._eval(resource, rec, node.left, scope)
            if node.consts is not None:  # id in (...200 ids...): one set, not one per row
                return left in node.consts
            return left in {self._eval(resource, rec, v, scope) for v in node.values}
        if isinstance(node, Compare):
            a, b = self._eval(resource, rec, node.left, scope), self._eval(resource, rec, node.right, scope)
            if node.op == "eq":
                return a == b
            if node.op == "ne":
                return a != b
            if a is None or b is None:
                return False
            return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[node.op]
        if isinstance(node, Lambda):
            owner_res, owner = resource, rec
            parts = node.collection.parts
            if parts[0] in scope:
                owner_res, owner = scope[parts[0]]
                parts = parts[1:]
            if len(parts) != 1:
                raise ODataError(f"lambda over {'/'.join(node.collection.parts)} is not supported")
            schema = SCHEMA[owner_res]
            if parts[0] in schema["reverse"]:
                rev = schema["reverse"][parts[0]]
                items, item_res = self.children(owner_res, owner, rev), rev.source
            elif parts[0] in schema["navs"]:
                item_res = schema["navs"][parts[0]].target
                tid = self.value(owner_res, owner, parts[0])
                items = [self.tables[item_res][tid]] if tid is not None else []
            else:
                raise ODataError(f"{owner_res} has no navigation '{parts[0]}'")
            check = (self.matches(item_res, it, node.body, {**scope, node.alias: (item_res, it)}) for it in items)
            return any(check) if node.kind == "any" else all(check)
        raise ODataError(f"cannot evaluate {node!r}")

    def _path(self, resource: str, rec: dict, parts: tuple[str, ...], scope: dict) -> Any:
        if parts[0] in scope:
            resource, rec = scope[parts[0]]
            parts = parts[1:]
        for i, name in enumerate(parts):
            self._check_field(resource, name)
            schema = SCHEMA[resource]
            value = self.value(resource, rec, name)
            if i == len(parts) - 1:
                if name in schema["reverse"]:
                    raise ODataError(f"'{name}' is a collection: use any()/all()")
                return value
            if name not in schema["navs"]:
                raise ODataError(f"'{name}' on {resource} is not a navigation")
            if value is None:
                return None
            resource = schema["navs"][name].target
            rec = self.tables[resource][value]
        return None

    # ------------------------------------------------------------ writing, with the server rules

    def create(self, resource: str, body: dict) -> dict:
        if resource not in TAG_PARENT:
            raise ApiError(405, f"creating {resource} is not supported by the double")
        parent = TAG_PARENT[resource]
        missing = {parent, "tag_key", "value"} - set(body)
        if missing or set(body) - {parent, "tag_key", "value"}:
            raise ApiError(400, f"{resource} needs exactly {parent}, tag_key, value")
        if body[parent] not in self.tables[parent]:
            raise ApiError(400, f"{parent} {body[parent]} does not exist")
        if not isinstance(body["tag_key"], str) or not body["tag_key"] or not isinstance(body["value"], str):
            raise ApiError(400, "tag_key must be a non-empty string and value a string")
        self._check_tag(resource, body["tag_key"], body["value"])
        for other in self.children(parent, self.tables[parent][body[parent]],
                                   Reverse(resource, parent)):
            if other["tag_key"] == body["tag_key"]:
                raise ApiError(409, f'"{parent}" and "tag_key" must be unique.')
        return self._insert(resource, dict(body))

    @staticmethod
    def _check_tag(resource: str, key: str, value: str) -> None:
        if any(ch.isspace() for ch in key):
            raise ApiError(400, f"{resource}: tag_key must not contain whitespace")
        if key.startswith("io.balena."):
            raise ApiError(400, f"{resource}: tag_key must not start with io.balena. (reserved)")
        if len(key) > TAG_KEY_MAX[resource]:
            raise ApiError(400, f"{resource}: tag_key longer than {TAG_KEY_MAX[resource]} characters")
        if resource == "device_tag" and len(value) > DEVICE_TAG_VALUE_MAX:
            raise ApiError(400, f"device_tag: value longer than {DEVICE_TAG_VALUE_MAX} characters")

    def update(self, resource: str, rows: list[dict], body: dict, who: str = "api") -> None:
        schema = SCHEMA[resource]
        bad = set(body) - schema["writable"]
        if bad:
            raise ApiError(400, f"cannot write {sorted(bad)} on {resource}")
        if resource in TAG_PARENT and isinstance(body.get("value"), str):
            for rec in rows:
                self._check_tag(resource, rec["tag_key"], body["value"])
        for rec in rows:  # validate every row first: a refused PATCH changes nothing
            self._check_update(resource, rec, body)
        for rec in rows:
            for name, value in body.items():
                if name in schema["navs"]:
                    if resource == "device" and name == "is_pinned_on__release" and rec[name] != value:
                        self.pin_history.setdefault(rec["id"], []).append((value, who))
                    self._set_nav(resource, rec, name, value)
                else:
                    rec[name] = value
            if resource == "device" and "belongs_to__application" in body and rec["is_pinned_on__release"]:
                rel = self.tables["release"][rec["is_pinned_on__release"]]
                if rel["belongs_to__application"] != rec["belongs_to__application"]:
                    self.pin_history.setdefault(rec["id"], []).append((None, "move"))
                    self._set_nav("device", rec, "is_pinned_on__release", None)
            if resource == "release":
                self.retarget(rec["belongs_to__application"])

    def _check_update(self, resource: str, rec: dict, body: dict) -> None:
        if resource == "device" and body.get("is_pinned_on__release") is not None:
            app_id = body.get("belongs_to__application", rec["belongs_to__application"])
            # the real rule: a device may be pinned to an invalidated release that succeeded, in its fleet
            self._check_release_for(app_id, body["is_pinned_on__release"], "is_pinned_on__release",
                                    allow_invalidated=True)
        if resource == "application" and body.get("should_be_running__release") is not None:
            self._check_release_for(rec["id"], body["should_be_running__release"], "should_be_running__release")
        if resource == "device" and "belongs_to__application" in body:
            if body["belongs_to__application"] not in self.tables["application"]:
                raise ApiError(400, "belongs_to__application: no such fleet")

    def _check_release_for(self, app_id: int, release_id: Any, field_name: str,
                           allow_invalidated: bool = False) -> None:
        rel = self.tables["release"].get(release_id) if isinstance(release_id, int) else None
        if rel is None:
            raise ApiError(400, f"{field_name}: release {release_id!r} does not exist")
        if rel["belongs_to__application"] != app_id:
            raise ApiError(400, f"{field_name}: release {rel['commit']} belongs to another fleet")
        if rel["status"] != "success" or (rel["is_invalidated"] and not allow_invalidated):
            raise ApiError(400, f"{field_name}: release {rel['commit']} is not a successful, valid release")

    @staticmethod
    def _valid(rel: dict) -> bool:
        return rel["status"] == "success" and not rel["is_invalidated"]

    def retarget(self, app_id: int) -> None:
        """A fleet that tracks latest runs its newest valid release, by start time (the API's hook after
        a release changes: a new success moves it forward, an invalidation back)."""
        app = self.tables["application"][app_id]
        if not app["should_track_latest_release"]:
            return
        valid = [r for r in self.tables["release"].values() if r["belongs_to__application"] == app_id and self._valid(r)]
        newest = max(valid, key=lambda r: (r["start_timestamp"], r["id"]), default=None)
        self._set_nav("application", app, "should_be_running__release", newest["id"] if newest else None)

    def remove(self, resource: str, rows: list[dict]) -> None:
        if resource == "release":
            for rec in rows:
                pinned = [d for d in self.tables["device"].values() if d["is_pinned_on__release"] == rec["id"]]
                fleets = [a for a in self.tables["application"].values()
                          if a["should_be_running__release"] == rec["id"]]
                if pinned or fleets:
                    raise ApiError(400, f"release {rec['commit'][:7]} is pinned to by {len(pinned)} device(s) and "
                                        f"{len(fleets)} fleet(s): it cannot be deleted")
            for rec in rows:
                for tag in self.children("release", rec, Reverse("release_tag", "release")):
                    self._delete("release_tag", tag["id"])
                self._delete("release", rec["id"])
            return
        if resource not in TAG_PARENT:
            raise ApiError(405, f"deleting {resource} is not supported by the double")
        for rec in rows:
            self._delete(resource, rec["id"])
