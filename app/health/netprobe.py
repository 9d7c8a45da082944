"""Network health: bytes per interface (psutil) and loss / round-trip time to an upstream target.

The upstream probe is a TCP connect to `host:port` (the MQTT broker, the remote-write endpoint...): it needs
no raw-socket privilege, and it measures what the app depends on - reaching that service. A connect that is
refused or times out counts as a lost probe; the RTT is the median of the connects that succeeded.
"""

from __future__ import annotations

import logging
import math
import socket
import statistics
import threading
import time
from dataclasses import dataclass

import psutil

log = logging.getLogger(__name__)


def parse_target(target: str) -> tuple[str, int]:
    """'host:port' -> (host, port), with a clear error for anything else."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"upstream target {target!r} must be HOST:PORT (e.g. broker.example:8883)")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ProbeResult:
    target: str
    sent: int
    lost: int
    rtt_seconds: float  # median over successful connects; NaN when all were lost

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.sent if self.sent else math.nan


def probe(target: str, attempts: int = 3, timeout_s: float = 1.0) -> ProbeResult:
    """Connect to `target` `attempts` times, one after the other."""
    host, port = parse_target(target)
    rtts = []
    for _ in range(attempts):
        start = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                rtts.append(time.perf_counter() - start)
        except OSError:
            pass
    return ProbeResult(target, attempts, attempts - len(rtts), statistics.median(rtts) if rtts else math.nan)


class UpstreamProbe:
    """Probes `target` every `interval_s` in a background thread; `latest` is the last round's result."""

    def __init__(self, target: str, interval_s: float = 10.0, attempts: int = 3, timeout_s: float = 1.0):
        parse_target(target)  # fail at start-up, not in the thread
        if interval_s <= 0 or attempts < 1 or timeout_s <= 0:
            raise ValueError("upstream probe: interval_s and timeout_s must be > 0 and attempts >= 1")
        self.target, self.interval_s, self.attempts, self.timeout_s = target, interval_s, attempts, timeout_s
        self.latest: ProbeResult | None = None
        # Connects sent and lost since start, as one tuple so a scrape never reads a half-updated pair.
        # Counters let the central Prometheus take a loss ratio over any window (rate(lost) / rate(sent));
        # the last round's 3-connect ratio alone is too coarse to hold a threshold for minutes.
        self.totals: tuple[int, int] = (0, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> ProbeResult:
        result = probe(self.target, self.attempts, self.timeout_s)
        sent, lost = self.totals
        self.totals = (sent + result.sent, lost + result.lost)
        self.latest = result
        return result

    def start(self) -> UpstreamProbe:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="upstream-probe", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.attempts * self.timeout_s + 1)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a probe must never kill the exporter
                log.exception("upstream probe of %s failed", self.target)
            self._stop.wait(self.interval_s)


def interface_bytes(exclude: tuple[str, ...] = ("lo",)) -> dict[tuple[str, str], int]:
    """{(interface, 'rx'|'tx'): bytes since boot} for every interface not in `exclude`."""
    out = {}
    for nic, c in psutil.net_io_counters(pernic=True).items():
        if nic not in exclude:
            out[(nic, "rx")] = c.bytes_recv
            out[(nic, "tx")] = c.bytes_sent
    return out
