"""Push samples with their own timestamps to a Prometheus remote-write receiver (`/api/v1/write`).

Used where time is simulated (rollout rehearsals): a scrape stamps samples with the wall clock, and
backfilled blocks are only picked up on a reload; the remote-write receiver takes samples at any
timestamp, in order per series, immediately. The message is prompb.WriteRequest, which has four small
messages; it is encoded here in protobuf's wire format rather than generated from the .proto, and
compressed with snappy's block format (cramjam), as the protocol asks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

import cramjam
import requests

Series = tuple[bytes, Sequence[tuple[int, float]]]  # labels (encoded once: see labels()), [(timestamp ms, value)]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def labels(names: Mapping[str, str]) -> bytes:
    """A series' labels as TimeSeries fields, sorted by name (as receivers expect); a series keeps its labels,
    so callers encode them once."""
    return b"".join(_field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in sorted(names.items()))


def encode(series: Iterable[Series]) -> bytes:
    """prompb.WriteRequest{timeseries: [TimeSeries{labels: [Label{name, value}], samples: [Sample{value, ts}]}]}."""
    out = bytearray()
    for encoded_labels, samples in series:
        body = b"".join(_field(2, b"\x09" + struct.pack("<d", v) + b"\x10" + _varint(ts)) for ts, v in samples)
        out += _field(1, encoded_labels + body)
    return bytes(out)


class RemoteWriter:
    def __init__(self, base_url: str, timeout_s: float = 30.0, series_per_request: int = 5000):
        self.url = base_url.rstrip("/") + "/api/v1/write"
        self.timeout_s, self.per_request = timeout_s, series_per_request
        self.session = requests.Session()
        self.sent = 0  # samples

    def push(self, series: Sequence[Series]) -> None:
        for i in range(0, len(series), self.per_request):
            part = series[i : i + self.per_request]
            data = bytes(cramjam.snappy.compress_raw(encode(part)))
            r = self.session.post(self.url, data=data, timeout=self.timeout_s, headers={
                "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                "X-Prometheus-Remote-Write-Version": "0.1.0"})
            if r.status_code >= 300:
                raise RuntimeError(f"remote write to {self.url}: HTTP {r.status_code}: {r.text[:200]}")
            self.sent += sum(len(s) for _, s in part)
