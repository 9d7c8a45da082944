"""The one PromQL client of the control plane: instant, range and scalar queries over Prometheus' HTTP API.

Queries are POSTed (long device lists fit), every call has a timeout, and every failure is a PromQLError
that callers turn into their own verdict ("inconclusive") or message; no caller sees requests' exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import requests


class PromQLError(RuntimeError):
    """Prometheus was unreachable, answered something other than JSON, or refused the query."""


@dataclass
class Series:
    labels: dict[str, str]
    times: list[datetime]
    values: list[float]


class PrometheusClient:
    def __init__(self, base_url: str, timeout_s: float = 30.0, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = session or requests.Session()

    def _post(self, path: str, data: dict) -> list[dict]:
        try:
            r = self.session.post(f"{self.base_url}{path}", data=data, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise PromQLError(f"Prometheus at {self.base_url} unreachable: {exc}") from exc
        try:
            body = r.json()
        except ValueError:
            raise PromQLError(f"{self.base_url}{path} answered HTTP {r.status_code}, not JSON") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise PromQLError(f"PromQL error for {data['query'][:120]!r}: {error}")
        result = (body.get("data") or {}).get("result")
        if not isinstance(result, list):
            raise PromQLError(f"{self.base_url}{path} answered success without data.result")
        return result

    def instant(self, query: str, at: float | datetime | None = None) -> list[tuple[dict, float]]:
        data = {"query": query}
        if at is not None:
            data["time"] = f"{at.timestamp() if isinstance(at, datetime) else at:.3f}"
        return [(r["metric"], float(r["value"][1])) for r in self._post("/api/v1/query", data)]

    def range(self, query: str, start: float, end: float, step: float) -> list[Series]:
        result = self._post("/api/v1/query_range", {"query": query, "start": start, "end": end, "step": step})
        return [
            Series(
                r["metric"],
                [datetime.fromtimestamp(float(t)) for t, _ in r["values"]],
                [float(v) for _, v in r["values"]],
            )
            for r in result
        ]

    def scalar(self, query: str, at: datetime | None = None) -> float | None:
        """The single value of an aggregating query; None when it returns no series (or NaN)."""
        result = self.instant(query, at)
        if not result:
            return None
        if len(result) > 1:
            raise PromQLError(f"query returned {len(result)} series, expected one (aggregate it): {query[:120]!r}")
        value = result[0][1]
        return None if value != value else value  # NaN (e.g. a quantile of nothing) is no data
