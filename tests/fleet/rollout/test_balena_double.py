"""The API double answers the real SDK the way the balena API does: queries parsed, server rules enforced."""

from __future__ import annotations

import pytest
from balena.exceptions import RequestError

from fleet.local.balena_sim.odata import In, ODataError, parse_filter, parse_query
from fleet.rollout.balena_client import BalenaUnavailable, RetryPolicy, connect, transport
from tests.support.balena_double import BalenaDouble


@pytest.fixture
def fleet(api: BalenaDouble):
    s = api.store
    app = s.add_application("acme/edgecv")
    other = s.add_application("acme/other")
    good = s.add_release(app["id"], "a" * 40)
    failed = s.add_release(app["id"], "f" * 40, status="failed")
    foreign = s.add_release(other["id"], "e" * 40)
    s.tables["application"][app["id"]]["should_be_running__release"] = good["id"]
    devs = [s.add_device(app["id"], f"{i:032x}", online=i % 2 == 0, running=good["id"]) for i in range(6)]
    return {"app": app, "other": other, "good": good, "failed": failed, "foreign": foreign, "devs": devs,
            "sdk": connect(api.url, api.key, RetryPolicy(attempts=3, backoff_s=0.01))}


def test_filters_the_sdk_builds_are_parsed_and_evaluated(api: BalenaDouble, fleet):
    sdk, devs = fleet["sdk"], fleet["devs"]
    ids = [d["id"] for d in devs]
    got = sdk.pine.get({"resource": "device", "options": {
        "$select": ["uuid"], "$filter": {"$or": [{"is_online": False}, {"id": {"$in": ids[:2]}}]},
        "$orderby": "id desc", "$top": 3}})
    assert [g["uuid"] for g in got] == [devs[5]["uuid"], devs[3]["uuid"], devs[1]["uuid"]]
    assert sdk.pine.get({"resource": "device", "options": {"$count": {"$filter": {"$not": {"is_online": True}}}}}) == 3
    sdk.models.device.tags.set(devs[2]["uuid"], "edgecv.canary", "it's true")  # a quote, URI-encoded
    tagged = sdk.pine.get({"resource": "device", "options": {"$select": "id", "$filter": {"device_tag": {"$any": {
        "$alias": "t", "$expr": {"t": {"tag_key": "edgecv.canary", "value": "it's true"}}}}}}})
    assert tagged == [{"id": devs[2]["id"]}]
    app = sdk.models.application.get("ACME/EdgeCV", {"$select": ["id", "slug"]})  # the SDK lower-cases slugs
    assert app == {"id": fleet["app"]["id"], "slug": "acme/edgecv"}
    # every request is recorded with its options decoded
    last = api.requests[-1]
    assert last.method == "GET" and last.options["$select"] in ("id,slug", "slug,id")


def test_expand_with_nested_options_and_navigation_shapes(fleet):
    sdk = fleet["sdk"]
    sdk.models.release.tags.set(fleet["good"]["id"], "edgecv.app", "1.0.0")
    sdk.models.release.tags.set(fleet["good"]["id"], "other", "x")
    app = sdk.models.application.get(fleet["app"]["id"], {
        "$select": ["id", "should_be_running__release"],
        "$expand": {"owns__release": {"$select": ["commit"], "$filter": {"status": "success"},
                                      "$expand": {"release_tag": {"$select": "value", "$filter": {"tag_key": "edgecv.app"}}}}}})
    assert app["should_be_running__release"] == {"__id": fleet["good"]["id"]}
    assert app["owns__release"] == [{"commit": "a" * 40, "release_tag": [{"value": "1.0.0"}]}]
    dev = sdk.models.device.get(fleet["devs"][0]["uuid"], {"$select": "is_pinned_on__release"})
    assert dev == {"is_pinned_on__release": None}


def test_queries_it_cannot_read_are_refused_with_a_reason(api: BalenaDouble, fleet):
    sdk = fleet["sdk"]
    with pytest.raises(RequestError) as err:
        sdk.pine.get({"resource": "device", "options": {"$select": ["no_such_field"]}})
    assert err.value.status_code == 400 and "no field 'no_such_field'" in err.value.body
    with pytest.raises(RequestError) as err:
        sdk.pine.get({"resource": "device", "options": {"$filter": {"device_name": {"$startswith": "a"}}}})
    assert err.value.status_code == 400 and "not supported" in err.value.body
    with pytest.raises(ODataError):
        parse_filter("id eq")
    assert parse_filter("id in (1, 2)") == In(parse_filter("id"), (parse_filter("1"), parse_filter("2")))
    assert parse_query("$select=a,b&$top=2").select == ["a", "b"]


def test_a_pin_must_be_a_successful_release_of_the_devices_fleet(fleet):
    sdk, dev = fleet["sdk"], fleet["devs"][0]
    for rel in (fleet["failed"], fleet["foreign"]):
        with pytest.raises(RequestError) as err:
            sdk.pine.patch({"resource": "device", "id": dev["id"], "body": {"is_pinned_on__release": rel["id"]}})
        assert err.value.status_code == 400
    with pytest.raises(RequestError):  # the fleet's own release may not be a failed one either
        sdk.pine.patch({"resource": "application", "id": fleet["app"]["id"],
                        "body": {"should_be_running__release": fleet["failed"]["id"]}})
    sdk.models.device.pin_to_release([d["uuid"] for d in fleet["devs"][:3]], "a" * 40)
    assert [d["is_pinned_on__release"] for d in fleet["devs"][:4]] == [fleet["good"]["id"]] * 3 + [None]


def test_moving_a_device_clears_its_pin_and_invalidating_the_latest_moves_the_fleet(api: BalenaDouble, fleet):
    sdk, dev, app = fleet["sdk"], fleet["devs"][0], fleet["app"]
    sdk.models.device.pin_to_release(dev["uuid"], "a" * 40)
    sdk.pine.patch({"resource": "device", "id": dev["id"], "body": {"belongs_to__application": fleet["other"]["id"]}})
    assert dev["is_pinned_on__release"] is None and dev["belongs_to__application"] == fleet["other"]["id"]
    app["should_track_latest_release"] = True
    newer = api.store.add_release(app["id"], "b" * 40)
    assert app["should_be_running__release"] == newer["id"]
    sdk.pine.patch({"resource": "release", "id": newer["id"], "body": {"is_invalidated": True}})
    assert app["should_be_running__release"] == fleet["good"]["id"]  # an implicit rollback


def test_tag_keys_are_unique_and_the_sdk_upserts(api: BalenaDouble, fleet):
    sdk, dev = fleet["sdk"], fleet["devs"][0]
    sdk.models.device.tags.set(dev["id"], "k", "1")
    sdk.models.device.tags.set(dev["id"], "k", "2")
    assert [(r.method, r.status) for r in api.requests if r.resource == "device_tag"] == [
        ("POST", 201), ("POST", 409), ("PATCH", 200)]
    assert sdk.models.device.tags.get(dev["id"], "k") == "2"
    sdk.models.device.tags.remove(dev["id"], "k")
    assert sdk.models.device.tags.get_all_by_device(dev["uuid"]) == []


def test_a_wrong_api_key_is_refused_and_not_retried(api: BalenaDouble, fleet):
    sdk = connect(api.url, "wrong", RetryPolicy(attempts=5, backoff_s=0.01))
    with pytest.raises(RequestError) as err:
        sdk.models.application.get("acme/edgecv")
    assert err.value.status_code == 401 and transport(sdk).sent == 1


def test_rate_limits_are_retried_after_retry_after_and_bounded(api: BalenaDouble, fleet):
    waits: list[float] = []
    sdk = connect(api.url, api.key, RetryPolicy(attempts=4, backoff_s=0.5), sleep=waits.append)
    api.inject(status=429, retry_after=9, times=2)
    assert sdk.models.application.get("acme/edgecv", {"$select": "id"})["id"] == fleet["app"]["id"]
    assert waits == [9.0, 9.0]
    api.inject(status=503, times=10)  # more than the budget: a clear error, not an endless loop
    with pytest.raises(BalenaUnavailable, match="HTTP 503 after 4 attempts"):
        sdk.models.application.get("acme/edgecv")
    assert waits[2:] == [0.5, 1.0, 2.0]


def test_a_slow_answer_times_out_and_is_retried(api: BalenaDouble, fleet):
    sdk = connect(api.url, api.key, RetryPolicy(attempts=2, backoff_s=0.01, timeout_s=(1.0, 0.3)))
    api.inject(status=None, delay=1.0, times=1)  # slower than the read timeout, once
    assert sdk.models.application.get("acme/edgecv", {"$select": "id"})["id"] == fleet["app"]["id"]
    assert transport(sdk).retried == 1
    api.inject(status=None, delay=1.0, times=2)
    with pytest.raises(BalenaUnavailable, match="Timeout"):
        sdk.models.application.get("acme/edgecv", {"$select": "id"})


# ---------------------------------------------------------------- rules checked against open-balena-api


@pytest.mark.parametrize("resource, key, value", [
    ("device_tag", "has space", "v"), ("device_tag", "io.balena.reserved", "v"), ("device_tag", "k" * 101, "v"),
    ("release_tag", "k" * 165, "v"), ("device_tag", "fine", "v" * 10_001)])
def test_tag_keys_and_values_the_api_rejects_are_rejected(fleet, resource: str, key: str, value: str):
    parent = {"device_tag": ("device", fleet["devs"][0]["id"]), "release_tag": ("release", fleet["good"]["id"])}
    name, pid = parent[resource]
    with pytest.raises(RequestError) as err:
        fleet["sdk"].pine.post({"resource": resource, "body": {name: pid, "tag_key": key, "value": value}})
    assert err.value.status_code == 400


def test_long_keys_the_api_accepts_are_accepted(fleet):
    sdk = fleet["sdk"]
    sdk.pine.post({"resource": "release_tag", "body": {"release": fleet["good"]["id"], "tag_key": "k" * 164, "value": "v"}})
    sdk.pine.post({"resource": "device_tag", "body": {"device": fleet["devs"][0]["id"], "tag_key": "k" * 100,
                                                      "value": "v" * 10_000}})


def test_an_overlong_url_is_414_and_an_oversized_body_413(fleet):
    sdk = fleet["sdk"]
    with pytest.raises(RequestError) as err:
        sdk.pine.get({"resource": "device", "options": {"$filter": {"id": {"$in": list(range(10**6, 10**6 + 1500))}}}})
    assert err.value.status_code == 414
    with pytest.raises(RequestError) as err:
        sdk.pine.post({"resource": "device_tag", "body": {"device": fleet["devs"][0]["id"], "tag_key": "k",
                                                          "value": "v" * (1 << 20)}})
    assert err.value.status_code == 413


def test_a_release_is_deleted_only_when_nothing_is_pinned_to_it(api: BalenaDouble, fleet):
    sdk, dev = fleet["sdk"], fleet["devs"][0]
    spare = api.store.add_release(fleet["app"]["id"], "c" * 40)
    sdk.pine.patch({"resource": "device", "id": dev["id"], "body": {"is_pinned_on__release": spare["id"]}})
    for rel in (spare, fleet["good"]):  # pinned by a device; the fleet's release
        with pytest.raises(RequestError) as err:
            sdk.pine.delete({"resource": "release", "id": rel["id"]})
        assert err.value.status_code == 400 and rel["id"] in api.store.tables["release"]
    sdk.pine.patch({"resource": "device", "id": dev["id"], "body": {"is_pinned_on__release": None}})
    sdk.pine.delete({"resource": "release", "id": spare["id"]})
    assert spare["id"] not in api.store.tables["release"]


def test_a_device_may_be_pinned_to_an_invalidated_release_of_its_fleet_but_a_fleet_may_not(fleet):
    sdk, dev = fleet["sdk"], fleet["devs"][0]
    sdk.pine.patch({"resource": "release", "id": fleet["good"]["id"], "body": {"is_invalidated": True}})
    sdk.pine.patch({"resource": "device", "id": dev["id"], "body": {"is_pinned_on__release": fleet["good"]["id"]}})
    assert dev["is_pinned_on__release"] == fleet["good"]["id"]
    with pytest.raises(RequestError):
        sdk.pine.patch({"resource": "application", "id": fleet["app"]["id"],
                        "body": {"should_be_running__release": fleet["good"]["id"]}})


def test_a_tracking_fleet_follows_the_release_that_started_last_after_any_release_patch(api: BalenaDouble, fleet):
    sdk, app = fleet["sdk"], fleet["app"]
    app["should_track_latest_release"] = True
    late = api.store.add_release(app["id"], "d" * 40, status="running", start_timestamp="2030-01-02T00:00:00.000Z")
    early = api.store.add_release(app["id"], "9" * 40, start_timestamp="2030-01-01T00:00:00.000Z")
    assert app["should_be_running__release"] == early["id"]  # created last, but started first
    sdk.pine.patch({"resource": "release", "id": late["id"], "body": {"status": "success"}})  # the build finished
    assert app["should_be_running__release"] == late["id"]


def test_a_device_without_vpn_still_updates_through_its_heartbeat(api: BalenaDouble, fleet):
    dev, spare = fleet["devs"][0], api.store.add_release(fleet["app"]["id"], "c" * 40)
    api.set_online(dev["uuid"], True, vpn=False)
    fleet["sdk"].pine.patch({"resource": "device", "id": dev["id"], "body": {"is_pinned_on__release": spare["id"]}})
    api.devices_apply_targets()
    assert dev["is_online"] is False and dev["is_running__release"] == spare["id"]
    api.reject_release(fleet["devs"][2]["uuid"], spare["id"])
    fleet["sdk"].pine.patch({"resource": "device", "id": fleet["devs"][2]["id"],
                             "body": {"is_pinned_on__release": spare["id"]}})
    api.devices_apply_targets()
    assert fleet["devs"][2]["update_status"] == "rejected" and fleet["devs"][2]["is_running__release"] == fleet["good"]["id"]
