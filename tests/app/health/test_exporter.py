"""The device health exporter: psutil path on this machine, tegrastats path through a stand-in of the tool,
trip points from a kernel-layout thermal sysfs, the upstream probe, and `edgecv telemetry health`."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.health.exporter import (
    HealthCollector,
    HealthExporter,
    PsutilSource,
    read_trip_points,
    throttled_zones,
    zone_name,
)
from app.health.netprobe import UpstreamProbe, parse_target, probe
from fleet.local.procs import free_port
from fleet.repo import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "tegrastats"
FAKE_TEGRASTATS = REPO_ROOT / "tests" / "support" / "fake_tegrastats.py"


def samples(registry) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the registry's exposition text."""
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(smp, name, **labels):
    return smp[(name, tuple(sorted(labels.items())))]


def fixture_lines(name: str) -> list[str]:
    return [ln for ln in (FIXTURES / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def thermal_sysfs(root: Path, zones: dict[str, list[tuple[str, int]]]) -> Path:
    """A /sys/class/thermal layout: thermal_zoneN/{type, trip_point_K_type, trip_point_K_temp} (millidegrees)."""
    for i, (kind, trips) in enumerate(zones.items()):
        z = root / f"thermal_zone{i}"
        z.mkdir(parents=True)
        (z / "type").write_text(kind + "\n")
        for k, (trip_type, milli) in enumerate(trips):
            (z / f"trip_point_{k}_type").write_text(trip_type + "\n")
            (z / f"trip_point_{k}_temp").write_text(f"{milli}\n")
    return root


def tegrastats_exporter(tmp_path, fixture: str, thermal_root: Path | None = None, **kw) -> HealthExporter:
    argv = [sys.executable, str(FAKE_TEGRASTATS), "--interval", "50", "--lines", str(FIXTURES / fixture)]
    return HealthExporter(CollectorRegistry(), source="tegrastats", tegrastats_argv=argv,
                          thermal_root=thermal_root or tmp_path / "no-thermal", **kw)


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# --- psutil path ---------------------------------------------------------------------------------------


def test_psutil_path_reports_this_machine(tmp_path):
    with HealthExporter(CollectorRegistry(), source="psutil", thermal_root=tmp_path) as h:
        smp = samples(h.registry)
    assert value(smp, "edgecv_device_health_up", source="psutil") == 1
    assert value(smp, "edgecv_device_memory_total_bytes") == psutil.virtual_memory().total
    used = value(smp, "edgecv_device_memory_used_bytes")
    assert 0 < used < psutil.virtual_memory().total
    assert 0 <= value(smp, "edgecv_device_cpu_percent") <= 100
    du = psutil.disk_usage("/")
    assert value(smp, "edgecv_device_disk_used_ratio", mount="/") == pytest.approx(du.used / (du.used + du.free), abs=0.01)
    assert value(smp, "edgecv_device_disk_free_bytes", mount="/") > 0
    nics = [n for n in psutil.net_io_counters(pernic=True) if n != "lo"]
    for nic in nics:
        assert value(smp, "edgecv_device_net_bytes_total", interface=nic, direction="rx") >= 0
    assert not any(name == "edgecv_device_net_bytes_total" and ("interface", "lo") in labels for name, labels in smp)
    # No GPU or power figures without tegrastats; nothing is throttling here.
    assert not any(name in ("edgecv_device_gpu_percent", "edgecv_device_power_watts") for name, _ in smp)
    assert value(smp, "edgecv_device_throttled") == 0


def test_cpu_percent_follows_load(tmp_path):
    src = PsutilSource()
    time.sleep(0.2)
    busy_until = time.monotonic() + 0.5
    while time.monotonic() < busy_until:  # keep one core busy for half a second
        pass
    assert src.read().cpu_percent > 100 / psutil.cpu_count() * 0.5


def test_a_missing_mount_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="/no/such/mount"):
        HealthCollector(PsutilSource(), mounts=["/", "/no/such/mount"], thermal_root=tmp_path)


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="auto, tegrastats or psutil"):
        HealthExporter(CollectorRegistry(), source="nvml")


# --- tegrastats path -----------------------------------------------------------------------------------


def test_tegrastats_path_exports_jetson_figures(tmp_path):
    with tegrastats_exporter(tmp_path, "r36-orin-nano.txt") as h:
        wait_until(lambda: h.source.read() is not None)
        smp = samples(h.registry)
    assert value(smp, "edgecv_device_health_up", source="tegrastats") == 1
    assert 0 <= value(smp, "edgecv_device_gpu_percent") <= 100
    assert value(smp, "edgecv_device_memory_total_bytes") in (7620 * 1024**2, 3602 * 1024**2)
    assert 4 < value(smp, "edgecv_device_power_watts", rail="VDD_IN") < 18
    assert 40 < value(smp, "edgecv_device_temperature_celsius", zone="tj") < 70
    # No kernel trip points here: the SoC zones get the documented fallback, the board sensors none.
    assert value(smp, "edgecv_device_thermal_trip_celsius", zone="cpu") == 95
    assert value(smp, "edgecv_device_throttled") == 0
    assert h.source.parse_errors == 0


def test_tegrastats_gpu_and_memory_controller_clocks_are_exported(tmp_path):
    # R35 AGX Orin prints EMC_FREQ 0%@2133 and GR3D_FREQ with its clock.
    with tegrastats_exporter(tmp_path, "r35-agx-orin.txt") as h:
        wait_until(lambda: h.source.read() is not None)
        smp = samples(h.registry)
    assert value(smp, "edgecv_device_emc_frequency_hertz") in (204e6, 2133e6)
    assert 0 <= value(smp, "edgecv_device_emc_percent") <= 100
    assert value(smp, "edgecv_device_gpu_frequency_hertz") >= 0


def test_overcurrent_events_are_counted_per_sensor(tmp_path):
    # Orin's hwmon layout: an OC-capable sensor with oc<N>_event_cnt next to its name.
    hw = tmp_path / "hwmon" / "hwmon3"
    hw.mkdir(parents=True)
    (hw / "name").write_text("soctherm_oc\n")
    (hw / "oc1_event_cnt").write_text("0\n")
    (hw / "oc2_event_cnt").write_text("17\n")
    (tmp_path / "hwmon" / "hwmon0").mkdir()  # a sensor without OC counters
    h = HealthExporter(CollectorRegistry(), source="psutil", thermal_root=tmp_path, hwmon_root=tmp_path / "hwmon")
    smp = samples(h.registry)
    assert value(smp, "edgecv_device_overcurrent_events_total", sensor="soctherm_oc/oc2") == 17
    assert value(smp, "edgecv_device_overcurrent_events_total", sensor="soctherm_oc/oc1") == 0
    (hw / "oc1_event_cnt").write_text("3\n")  # the firmware throttled again
    assert value(samples(h.registry), "edgecv_device_overcurrent_events_total", sensor="soctherm_oc/oc1") == 3


def test_tegrastats_throttling_against_kernel_trip_points(tmp_path):
    # Passive trip of the cpu zone at 60 C: the loaded R36 line (cpu@65.562C) throttles, idle ones do not.
    root = thermal_sysfs(tmp_path / "thermal", {
        "cpu-thermal": [("passive", 60000), ("critical", 104500)],
        "gpu-thermal": [("active", 50000), ("passive", 99000)],
    })
    assert read_trip_points(root) == {"cpu": 60.0, "gpu": 99.0}
    exp = tegrastats_exporter(tmp_path, "r36-orin-nano.txt", thermal_root=root)
    src = exp.source  # fed by hand: exactly one known line at a time
    for line, hot in ((2, True), (0, False)):
        src.feed(fixture_lines("r36-orin-nano.txt")[line])
        smp = samples(exp.registry)
        assert value(smp, "edgecv_device_throttled") == (1 if hot else 0)
        assert value(smp, "edgecv_device_thermal_trip_celsius", zone="cpu") == 60.0


def test_the_nano_pmic_reading_never_counts_as_throttling(tmp_path):
    # Nano prints PMIC@100C as a fixed value; PMIC has no trip point, so it must not trip anything.
    exp = tegrastats_exporter(tmp_path, "r32-nano.txt")
    exp.source.feed([ln for ln in fixture_lines("r32-nano.txt") if "PMIC@100C" in ln][0])
    smp = samples(exp.registry)
    assert value(smp, "edgecv_device_temperature_celsius", zone="pmic") == 100
    assert value(smp, "edgecv_device_throttled") == 0


def test_stale_or_garbled_tegrastats_output_reads_as_down(tmp_path):
    argv = [sys.executable, str(FAKE_TEGRASTATS), "--interval", "50", "--lines", str(FIXTURES / "r35-agx-orin.txt"),
            "--count", "1"]
    h = HealthExporter(CollectorRegistry(), source="tegrastats", tegrastats_argv=argv, thermal_root=tmp_path)
    h.source.stale_after_s = 0.3
    with h:
        wait_until(lambda: h.source.read() is not None)
        time.sleep(0.4)  # the stand-in printed one line and exited; the restart waits 1 s
        smp = samples(h.registry)
        h.source.feed("tegrastats: cannot open /sys/kernel/debug (permission denied)")
    assert value(smp, "edgecv_device_health_up", source="tegrastats") == 0
    assert not any(name == "edgecv_device_cpu_percent" for name, _ in smp)  # no stale figures
    assert value(smp, "edgecv_device_disk_used_ratio", mount="/") > 0  # disk still from psutil
    assert h.source.parse_errors == 1


def test_tegrastats_is_restarted_when_it_exits(tmp_path):
    argv = [sys.executable, str(FAKE_TEGRASTATS), "--interval", "20", "--lines", str(FIXTURES / "r32-nano.txt"),
            "--count", "2"]
    h = HealthExporter(CollectorRegistry(), source="tegrastats", tegrastats_argv=argv, thermal_root=tmp_path)
    with h:
        wait_until(lambda: h.source._proc is not None)
        first_pid = h.source._proc.pid
        wait_until(lambda: h.source._proc.pid != first_pid, timeout=5)
        h.source._latest = None
        wait_until(lambda: h.source.read() is not None)  # the new process delivers readings


def test_zone_names_agree_between_kernel_and_tegrastats():
    assert {zone_name(n) for n in ("CPU-therm", "cpu-thermal", "CPU", "cpu_thermal")} == {"cpu"}
    assert throttled_zones({"cpu": 95.0, "gpu": 80.0, "pmic": 100.0}, {"cpu": 95.0, "gpu": 90.0}) == ["cpu"]


# --- network -------------------------------------------------------------------------------------------


@pytest.fixture
def listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


def test_probe_of_a_listening_target(listener):
    r = probe(listener, attempts=3, timeout_s=1)
    assert (r.sent, r.lost, r.loss_ratio) == (3, 0, 0.0)
    assert 0 < r.rtt_seconds < 0.5


def test_probe_of_a_closed_port_is_all_loss():
    r = probe(f"127.0.0.1:{free_port()}", attempts=2, timeout_s=0.5)
    assert r.loss_ratio == 1.0 and math.isnan(r.rtt_seconds)


@pytest.mark.parametrize("bad", ["broker", "broker:", ":8883", "broker:http", "broker:70000"])
def test_bad_upstream_targets_are_refused(bad):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_target(bad)


def test_upstream_probe_is_exported(tmp_path, listener):
    with HealthExporter(CollectorRegistry(), source="psutil", upstream=listener, probe_interval_s=0.1,
                        thermal_root=tmp_path) as h:
        wait_until(lambda: h.probe.latest is not None)
        smp = samples(h.registry)
    assert value(smp, "edgecv_device_net_loss_ratio", target=listener) == 0
    assert 0 < value(smp, "edgecv_device_net_rtt_seconds", target=listener) < 0.5


def test_probe_counters_accumulate_and_count_a_closed_upstream_as_lost(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        target = f"127.0.0.1:{server.getsockname()[1]}"
        h = HealthExporter(CollectorRegistry(), source="psutil", upstream=target, thermal_root=tmp_path)
        h.probe.run_once()
        h.probe.run_once()
        assert h.probe.totals == (6, 0)
    # The upstream goes away (socket closed): the next round's connects are refused.
    h.probe.run_once()
    smp = samples(h.registry)
    assert value(smp, "edgecv_device_net_probes_sent_total", target=target) == 9
    assert value(smp, "edgecv_device_net_probes_lost_total", target=target) == 3
    assert value(smp, "edgecv_device_net_loss_ratio", target=target) == 1.0


def test_upstream_probe_rejects_bad_settings():
    with pytest.raises(ValueError, match="interval_s"):
        UpstreamProbe("127.0.0.1:80", interval_s=0)


# --- the CLI -------------------------------------------------------------------------------------------


def test_telemetry_health_serves_metrics_until_sigterm(listener):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli", "health", "--host", "127.0.0.1", "--port", str(port),
         "--source", "psutil", "--upstream", listener, "--probe-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        text = ""
        deadline = time.monotonic() + 20
        while "edgecv_device_net_loss_ratio{" not in text:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, text
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        assert 'edgecv_device_health_up{source="psutil"} 1.0' in text
        assert "edgecv_device_memory_used_bytes " in text
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_telemetry_health_refuses_a_bad_mount():
    from click.testing import CliRunner

    from app.health.cli import health

    result = CliRunner().invoke(health, ["--port", "0", "--mount", "/no/such/mount"])
    assert result.exit_code == 2 and "/no/such/mount" in result.output
