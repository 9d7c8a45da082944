"""Device health exporter: CPU, GPU, memory, disk, temperatures, power, throttling and network.

Two sources of system numbers, one set of metric names (edgecv_device_*):
- on a Jetson, `tegrastats` (app.health.tegrastats parses its lines; the tool runs as a child process);
- elsewhere, psutil (no GPU or power figures there).
Disk and network always come from psutil / app.health.netprobe.

Thermal throttling: a zone is throttling when its temperature reaches its passive trip point. Trip points are
read from the kernel (/sys/class/thermal/thermal_zone*/trip_point_*); where a zone has none readable, the
SoC zones fall back to DEFAULT_TRIP_C. Sensors without a trip point (board, PMIC, wifi) never count.

Use: `HealthExporter(registry).start()` beside the pipeline's Metrics registry (or `edgecv telemetry health`
to serve it alone). The metrics are computed at scrape time, except the upstream probe, which runs in the
background so that a scrape never waits on the network.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from app.health.netprobe import UpstreamProbe, interface_bytes
from app.health.tegrastats import TegraSample, TegrastatsParseError, parse_line

log = logging.getLogger(__name__)

THERMAL_ROOT = Path("/sys/class/thermal")
# Orin's over-current protection throttles clocks without any thermal zone noticing; the kernel counts
# each event in hwmon (e.g. /sys/class/hwmon/hwmon3/oc1_event_cnt, name "soctherm_oc" or the INA3221's).
HWMON_ROOT = Path("/sys/class/hwmon")
# Fallback passive trip (Celsius) for the SoC zones tegrastats names, used only where the kernel exposes
# none. Conservative: a little below the ~97-99 C at which Nano/Xavier/Orin firmware starts throttling.
DEFAULT_TRIP_C = {z: 95.0 for z in ("cpu", "gpu", "soc0", "soc1", "soc2", "cv0", "cv1", "cv2", "tj", "aux")}

# name -> (type, help, labels): the one table describe() and collect() both follow.
DEVICE_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "edgecv_device_health_up": ("gauge", "1 when the health source delivers fresh readings", ("source",)),
    "edgecv_device_cpu_percent": ("gauge", "CPU utilisation, mean over online cores (0-100)", ()),
    "edgecv_device_gpu_percent": ("gauge", "GPU (GR3D) utilisation (0-100); Jetson only", ()),
    "edgecv_device_gpu_frequency_hertz": ("gauge", "GPU (GR3D) clock; Jetson only", ()),
    "edgecv_device_emc_percent": ("gauge", "Memory controller (EMC) load (0-100); Jetson only", ()),
    "edgecv_device_emc_frequency_hertz": ("gauge", "Memory controller (EMC) clock; Jetson only", ()),
    "edgecv_device_overcurrent_events": (
        "counter", "Over-current throttling events per sensor since boot (hwmon oc*_event_cnt; Orin)", ("sensor",)),
    "edgecv_device_memory_used_bytes": ("gauge", "RAM in use (total - available)", ()),
    "edgecv_device_memory_total_bytes": ("gauge", "RAM total", ()),
    "edgecv_device_swap_used_bytes": ("gauge", "Swap in use", ()),
    "edgecv_device_temperature_celsius": ("gauge", "Temperature per thermal zone", ("zone",)),
    "edgecv_device_thermal_trip_celsius": ("gauge", "Passive (throttling) trip point per zone", ("zone",)),
    "edgecv_device_throttled": ("gauge", "1 while any zone is at or over its passive trip point", ()),
    "edgecv_device_power_watts": ("gauge", "Instantaneous power per rail; Jetson only", ("rail",)),
    "edgecv_device_disk_used_ratio": ("gauge", "Used fraction of the filesystem (as df shows it)", ("mount",)),
    "edgecv_device_disk_free_bytes": ("gauge", "Bytes available to unprivileged users", ("mount",)),
    "edgecv_device_net_bytes": ("counter", "Bytes received (rx) and sent (tx) per interface", ("interface", "direction")),
    "edgecv_device_net_rtt_seconds": ("gauge", "Median TCP connect time to the upstream target", ("target",)),
    "edgecv_device_net_loss_ratio": ("gauge", "Fraction of lost connects to the upstream target", ("target",)),
    "edgecv_device_net_probes_sent": ("counter", "TCP connects tried to the upstream target", ("target",)),
    "edgecv_device_net_probes_lost": ("counter", "TCP connects to the upstream target refused or timed out", ("target",)),
}


def exported_names() -> set[str]:
    """The sample names these metrics produce (counters gain _total), for dashboard/rule checks."""
    return {n + "_total" if kind == "counter" else n for n, (kind, _, _) in DEVICE_METRICS.items()}


@dataclass
class HealthSample:
    """System numbers from one source; None where the source has no such figure."""

    cpu_percent: float | None = None
    gpu_percent: float | None = None
    gpu_freq_hz: float | None = None
    emc_percent: float | None = None
    emc_freq_hz: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    swap_used_bytes: float | None = None
    temperatures: dict[str, float] = field(default_factory=dict)
    trips: dict[str, float] = field(default_factory=dict)  # trip points the source itself knows
    power_watts: dict[str, float] = field(default_factory=dict)


# --- thermal -------------------------------------------------------------------------------------------


def zone_name(raw: str) -> str:
    """Kernel and tegrastats spell zones differently ('CPU-therm', 'cpu-thermal', 'CPU'): one key."""
    name = raw.strip().lower()
    for suffix in ("-thermal", "_thermal", "-therm", "_therm"):
        name = name.removesuffix(suffix)
    return name


def read_trip_points(root: Path = THERMAL_ROOT) -> dict[str, float]:
    """{zone: lowest passive trip in Celsius} from the kernel's thermal sysfs (empty where there is none)."""
    trips: dict[str, float] = {}
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            name = zone_name((zone / "type").read_text())
            for type_file in zone.glob("trip_point_*_type"):
                if type_file.read_text().strip() != "passive":
                    continue
                temp_file = type_file.with_name(type_file.name.replace("_type", "_temp"))
                celsius = int(temp_file.read_text()) / 1000.0
                if celsius > 0:  # some zones list a disabled trip as 0 or negative
                    trips[name] = min(celsius, trips.get(name, celsius))
        except (OSError, ValueError) as exc:
            log.debug("skipping %s: %s", zone, exc)
    return trips


def overcurrent_events(root: Path = HWMON_ROOT) -> dict[str, int]:
    """{"<hwmon name>/oc<N>": events since boot} for every readable oc*_event_cnt; {} off Jetson."""
    events = {}
    for counter in sorted(root.glob("hwmon*/oc*_event_cnt")):
        try:
            name = (counter.parent / "name").read_text().strip() if (counter.parent / "name").exists() else counter.parent.name
            events[f"{name}/{counter.name.removesuffix('_event_cnt')}"] = int(counter.read_text().strip())
        except (OSError, ValueError):
            continue  # a sensor that is gone or unreadable is not an event
    return events


def throttled_zones(temperatures: dict[str, float], trips: dict[str, float]) -> list[str]:
    """Zones whose temperature is at or above their trip point."""
    return sorted(z for z, t in temperatures.items() if z in trips and t >= trips[z])


# --- sources -------------------------------------------------------------------------------------------


class PsutilSource:
    name = "psutil"

    def __init__(self):
        psutil.cpu_percent(interval=None)  # the first call only sets the baseline for the next one

    def start(self) -> PsutilSource:
        return self

    def stop(self) -> None:
        pass

    def read(self) -> HealthSample:
        vm, swap = psutil.virtual_memory(), psutil.swap_memory()
        sample = HealthSample(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_used_bytes=vm.total - vm.available,
            memory_total_bytes=vm.total,
            swap_used_bytes=swap.used,
        )
        sensors = psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") else {}
        for chip, entries in sensors.items():
            for i, entry in enumerate(entries):
                zone = zone_name(entry.label or chip)
                if zone in sample.temperatures:
                    zone = f"{zone}{i}"
                sample.temperatures[zone] = entry.current
                if entry.high:  # hwmon's max: the best trip we have without a thermal zone
                    sample.trips[zone] = entry.high
        return sample


class TegrastatsSource:
    """Runs `tegrastats --interval MS` and keeps the newest parsed line; restarts it if it exits."""

    name = "tegrastats"

    def __init__(self, argv: list[str] | None = None, interval_ms: int = 1000, stale_after_s: float | None = None):
        self.argv = argv or [shutil.which("tegrastats") or "tegrastats", "--interval", str(interval_ms)]
        # A line older than this is not reported (tegrastats hung or died): health_up goes to 0.
        self.stale_after_s = stale_after_s if stale_after_s is not None else 3 * interval_ms / 1000 + 2
        self.parse_errors = 0
        self._latest: tuple[TegraSample, float] | None = None
        self._proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TegrastatsSource:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tegrastats", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def feed(self, line: str) -> None:
        """Take one output line (the reader thread calls this; tests may too)."""
        try:
            self._latest = (parse_line(line), time.monotonic())
        except TegrastatsParseError as exc:
            self.parse_errors += 1
            log.warning("tegrastats: %s", exc)

    def read(self) -> HealthSample | None:
        if self._latest is None or time.monotonic() - self._latest[1] > self.stale_after_s:
            return None
        t = self._latest[0]
        return HealthSample(
            cpu_percent=t.cpu_percent,
            gpu_percent=t.gpu_percent,
            gpu_freq_hz=None if t.gpu_freq_mhz is None else t.gpu_freq_mhz * 1e6,
            emc_percent=t.emc_percent,
            emc_freq_hz=None if t.emc_freq_mhz is None else t.emc_freq_mhz * 1e6,
            memory_used_bytes=t.ram_used_bytes,
            memory_total_bytes=t.ram_total_bytes,
            swap_used_bytes=t.swap_used_bytes,
            temperatures=dict(t.temperatures),
            power_watts=dict(t.power_watts),
        )

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            except OSError as exc:
                log.error("cannot run %s: %s", self.argv[0], exc)
            else:
                for line in self._proc.stdout:
                    self.feed(line)
                    backoff = 1.0
                self._proc.wait()
                if not self._stop.is_set():
                    log.warning("tegrastats exited with %s; restarting in %.0f s", self._proc.returncode, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)


def make_source(kind: str = "auto", tegrastats_argv: list[str] | None = None, interval_ms: int = 1000):
    """'auto' picks tegrastats where the tool exists (a Jetson), else psutil."""
    if kind == "auto":
        kind = "tegrastats" if (tegrastats_argv or shutil.which("tegrastats")) else "psutil"
    if kind == "tegrastats":
        return TegrastatsSource(tegrastats_argv, interval_ms)
    if kind == "psutil":
        return PsutilSource()
    raise ValueError(f"health source must be auto, tegrastats or psutil, not {kind!r}")


# --- the collector -------------------------------------------------------------------------------------


class HealthCollector:
    """A prometheus_client collector: reads the source, disks, NICs and the last probe at each scrape."""

    def __init__(
        self,
        source,
        mounts: Iterable[str] = ("/",),
        probe: UpstreamProbe | None = None,
        thermal_root: Path = THERMAL_ROOT,
        net_exclude: tuple[str, ...] = ("lo",),
        hwmon_root: Path = HWMON_ROOT,
    ):
        self.mounts = list(mounts)
        for m in self.mounts:
            if not Path(m).is_dir():
                raise ValueError(f"health: disk mount {m!r} is not a directory")
        self.source, self.probe, self.net_exclude, self.hwmon_root = source, probe, net_exclude, hwmon_root
        self.trips = read_trip_points(thermal_root)  # trip points do not change while running

    def _families(self) -> dict[str, Metric]:
        return {
            name: (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc, labels=list(labels))
            for name, (kind, doc, labels) in DEVICE_METRICS.items()
        }

    def describe(self) -> Iterable[Metric]:
        return self._families().values()

    def collect(self) -> Iterable[Metric]:
        f = self._families()
        try:
            sample = self.source.read()
        except Exception:  # a failing source shows as health_up 0, never as a failed scrape
            log.exception("health source %s failed", self.source.name)
            sample = None
        f["edgecv_device_health_up"].add_metric([self.source.name], 0 if sample is None else 1)
        if sample is not None:
            self._add_system(f, sample)
        for mount in self.mounts:
            try:
                du = psutil.disk_usage(mount)
            except OSError:
                continue
            f["edgecv_device_disk_used_ratio"].add_metric([mount], du.used / max(du.used + du.free, 1))
            f["edgecv_device_disk_free_bytes"].add_metric([mount], du.free)
        for sensor, events in overcurrent_events(self.hwmon_root).items():
            f["edgecv_device_overcurrent_events"].add_metric([sensor], events)
        for (nic, direction), value in sorted(interface_bytes(self.net_exclude).items()):
            f["edgecv_device_net_bytes"].add_metric([nic, direction], value)
        if self.probe is not None and self.probe.latest is not None:
            r = self.probe.latest
            f["edgecv_device_net_rtt_seconds"].add_metric([r.target], r.rtt_seconds)
            f["edgecv_device_net_loss_ratio"].add_metric([r.target], r.loss_ratio)
            sent, lost = self.probe.totals
            f["edgecv_device_net_probes_sent"].add_metric([r.target], sent)
            f["edgecv_device_net_probes_lost"].add_metric([r.target], lost)
        return f.values()

    def _add_system(self, f: dict[str, Metric], s: HealthSample) -> None:
        for name, value in (
            ("edgecv_device_cpu_percent", s.cpu_percent),
            ("edgecv_device_gpu_percent", s.gpu_percent),
            ("edgecv_device_gpu_frequency_hertz", s.gpu_freq_hz),
            ("edgecv_device_emc_percent", s.emc_percent),
            ("edgecv_device_emc_frequency_hertz", s.emc_freq_hz),
            ("edgecv_device_memory_used_bytes", s.memory_used_bytes),
            ("edgecv_device_memory_total_bytes", s.memory_total_bytes),
            ("edgecv_device_swap_used_bytes", s.swap_used_bytes),
        ):
            if value is not None:
                f[name].add_metric([], value)
        trips = {**{z: DEFAULT_TRIP_C[z] for z in s.temperatures if z in DEFAULT_TRIP_C}, **s.trips, **self.trips}
        for zone, celsius in sorted(s.temperatures.items()):
            f["edgecv_device_temperature_celsius"].add_metric([zone], celsius)
            if zone in trips:
                f["edgecv_device_thermal_trip_celsius"].add_metric([zone], trips[zone])
        f["edgecv_device_throttled"].add_metric([], 1 if throttled_zones(s.temperatures, trips) else 0)
        for rail, watts in sorted(s.power_watts.items()):
            f["edgecv_device_power_watts"].add_metric([rail], watts)


class HealthExporter:
    """The health collector on `registry`, with its source and optional upstream probe started and stopped."""

    def __init__(
        self,
        registry: CollectorRegistry,
        source: str = "auto",
        mounts: Iterable[str] = ("/",),
        upstream: str | None = None,
        probe_interval_s: float = 10.0,
        tegrastats_argv: list[str] | None = None,
        thermal_root: Path = THERMAL_ROOT,
        hwmon_root: Path = HWMON_ROOT,
    ):
        self.source = make_source(source, tegrastats_argv)
        self.probe = UpstreamProbe(upstream, probe_interval_s) if upstream else None
        self.collector = HealthCollector(self.source, mounts, self.probe, thermal_root, hwmon_root=hwmon_root)
        self.registry = registry
        registry.register(self.collector)

    def start(self) -> HealthExporter:
        self.source.start()
        if self.probe is not None:
            self.probe.start()
        return self

    def stop(self) -> None:
        if self.probe is not None:
            self.probe.stop()
        self.source.stop()
        self.registry.unregister(self.collector)

    def __enter__(self) -> HealthExporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
