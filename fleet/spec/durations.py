"""The one duration grammar: '30s', '15m', '24h', '2d', '1w', '1d12h', or a number of seconds."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """'24h', '1d12h', '90m', '30s' or a number of seconds; raises ValueError otherwise."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text and _DURATION.sub("", text) == "":
            return timedelta(seconds=sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(text)))
    raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 15m, 24h, 2d, 1d12h)")


def format_duration(td: timedelta) -> str:
    s = int(td.total_seconds())
    parts = [(s // 86400, "d"), (s % 86400 // 3600, "h"), (s % 3600 // 60, "m"), (s % 60, "s")]
    return "".join(f"{n}{u}" for n, u in parts if n) or "0s"
