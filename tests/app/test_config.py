"""The app config: defaults from the manifest, and every bad input named by file:line: field."""

from pathlib import Path

import pytest

from app.config import check_config, load_config
from fleet.spec.problems import ValidationFailed
from tests.app.conftest import GOOD, write


def problems_of(path: Path) -> list[str]:
    resolved, problems = check_config(path)
    assert resolved is None, "expected the config to be rejected"
    return [str(p) for p in problems]


def test_good_config_resolves_with_manifest_defaults(site):
    r = load_config(write(site, GOOD))
    assert r.manifest.name == "tiny" and r.model_name == "tiny"
    assert r.max_batch == 4 and r.max_delay_s == pytest.approx(0.005)  # from the manifest's triton settings
    assert r.config.triton.protocol == "grpc" and r.config.triton.use_shared_memory  # local Triton
    gate, lobby = r.config.cameras
    assert gate.is_stream and not lobby.is_stream
    assert [x.name for x in gate.rules_config.rules] == ["dock-person", "door-in"]
    from app.config import camera_source

    assert camera_source(r, lobby) == str(site / "clip.avi")  # relative to the config file
    assert camera_source(r, gate) == gate.url


def test_batching_and_triton_overrides(site):
    body = GOOD + "batching: {max_batch: 2, max_delay_ms: 30}\ntriton: {url: '10.1.2.3:8001', protocol: http}\n"
    r = load_config(write(site, body))
    assert (r.max_batch, r.max_delay_s) == (2, pytest.approx(0.030))
    assert r.config.triton.protocol == "http" and not r.config.triton.use_shared_memory  # remote: no shm


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_unknown_key_named_with_line(site):
    path = write(site, GOOD.replace("    fps: 10", "    fsp: 10"))
    (problem,) = problems_of(path)
    assert problem == f"{path}:{line_of(path, 'fsp')}: cameras[0].fsp: unknown key (not allowed here; is it a typo?)"


def test_wrong_values_each_named(site):
    body = GOOD.replace("port: 1884", "port: 99999") + "triton: {protocol: websocket}\n"
    path = write(site, body)
    problems = problems_of(path)
    assert any(p.startswith(f"{path}:{line_of(path, 'port: 99999')}: mqtt.port:") for p in problems), problems
    assert any(p.startswith(f"{path}:{line_of(path, 'websocket')}: triton.protocol:") for p in problems), problems


def test_rule_errors_point_into_the_rule_without_pydantic_tags(site):
    body = GOOD.replace("direction: a_to_b}", "direction: sideways}")
    path = write(site, body)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'sideways')}: cameras[0].rules[1].direction:"), problem
    assert "line_crossing" not in problem


def test_rule_naming_unknown_zone(site):
    path = write(site, GOOD.replace("zone: dock,", "zone: yard,"))
    (problem,) = problems_of(path)
    assert "unknown zone 'yard'" in problem and f":{line_of(path, '- id: gate')}: cameras[0]:" in problem


def test_rule_class_not_in_the_model(site):
    path = write(site, GOOD.replace("classes: [person]", "classes: [forklift]"))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'forklift')}: cameras[0].rules[0].classes:")
    assert "forklift" in problem and "person" in problem


def test_references_checked(site):
    body = (
        GOOD.replace("models/tiny/manifest.yaml", "models/nope/manifest.yaml").replace("clip.avi", "missing.avi")
        + "batching: {max_batch: 8}\n"
    )
    path = write(site, body)
    problems = problems_of(path)
    assert any(f":{line_of(path, 'nope')}: manifest: file not found" in p for p in problems), problems
    assert any(f":{line_of(path, 'missing.avi')}: cameras[1].url: video file not found" in p for p in problems)


def test_batch_larger_than_the_model_allows(site):
    path = write(site, GOOD + "batching: {max_batch: 8}\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'max_batch: 8')}: batching.max_batch: 8 exceeds")


def test_duplicate_cameras_and_bad_ids(site):
    path = write(site, GOOD.replace("id: lobby", "id: gate").replace("device_id: jetson-01", "device_id: 'a/b'"))
    problems = problems_of(path)
    assert any("cameras: " in p and "duplicate camera ids: gate" in p for p in problems), problems
    assert any(f":{line_of(path, 'device_id')}: device_id:" in p for p in problems), problems


def test_invalid_yaml_and_missing_sections(site):
    path = write(site, "site_id: [unclosed\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:") and "invalid YAML" in problem
    path = write(site, "site_id: s\ndevice_id: d\nmanifest: models/tiny/manifest.yaml\n")
    assert any(": cameras: Field required" in p for p in problems_of(path))
    with pytest.raises(ValidationFailed, match="cameras"):
        load_config(path)


@pytest.mark.parametrize("url, message", [
    ("rtsp://", "has no host"),
    ("rtsp://:554/stream1", "has no host"),
    ("rtsp://10.0.0.21:99999/stream1", "invalid port"),
    ("rtsp://cam-gate.invalid:554/stream1", "host 'cam-gate.invalid' does not resolve"),
])
def test_camera_urls_are_checked_like_the_triton_url(site, url, message):
    path = write(site, GOOD.replace("rtsp://10.0.0.21:554/stream1", url))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(path, url)}: cameras[0].url:") and message in problem, problem


def test_drain_bound_defaults_to_ten_seconds_and_is_checked(site):
    assert load_config(write(site, GOOD)).config.drain_timeout_s == 10.0
    path = write(site, GOOD + "drain_timeout_s: 0\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'drain_timeout_s')}: drain_timeout_s:")
