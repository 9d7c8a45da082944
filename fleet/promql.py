"""The one PromQL client of the control plane: instant, range and scalar queries over Prometheus' HTTP API.

Queries are POSTed (long device lists fit), every call has a timeout, and every failure is a PromQLError
that callers turn into their own verdict ("inconclusive") or message; no caller sees requests' exceptions.

Amazon Managed Prometheus accepts only SigV4-signed requests: a workspace URL
(https://aps-workspaces.<region>.amazonaws.com/workspaces/ws-...) is signed automatically with the default
AWS credential chain (env, profile, credential_process for IAM Roles Anywhere); `sigv4_region` forces
signing for any other URL (a SigV4 proxy in front of a self-hosted Prometheus).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime

import requests

_AMP_HOST = re.compile(r"^https://aps-workspaces\.([a-z0-9-]+)\.amazonaws\.com/")
SIGV4_REGION_ENV = "EDGECV_PROMETHEUS_SIGV4_REGION"


def amp_region(url: str) -> str | None:
    """The AWS region of an Amazon Managed Prometheus workspace URL, or None for any other URL."""
    m = _AMP_HOST.match(url)
    return m.group(1) if m else None


class SigV4(requests.auth.AuthBase):
    """Signs each request with AWS Signature Version 4 (service `aps`), with fresh credentials per request
    so that short-lived Roles Anywhere sessions renew themselves."""

    def __init__(self, region: str, service: str = "aps", credentials=None):
        import botocore.session

        self.region, self.service = region, service
        self._credentials = credentials or botocore.session.get_session().get_credentials()
        if self._credentials is None:
            raise PromQLError(f"no AWS credentials to sign Prometheus requests for region {region} "
                              "(set a profile, AWS_* variables or a credential_process)")

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        headers = {"Content-Type": r.headers.get("Content-Type", "")} if r.body else {}
        aws = AWSRequest(method=r.method, url=r.url, data=r.body or b"", headers=headers)
        SigV4Auth(self._credentials.get_frozen_credentials(), self.service, self.region).add_auth(aws)
        r.headers.update(dict(aws.headers.items()))
        return r


class PromQLError(RuntimeError):
    """Prometheus was unreachable, answered something other than JSON, or refused the query."""


@dataclass
class Series:
    labels: dict[str, str]
    times: list[datetime]
    values: list[float]


class PrometheusClient:
    def __init__(self, base_url: str, timeout_s: float = 30.0, session: requests.Session | None = None,
                 sigv4_region: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        region = sigv4_region or os.environ.get(SIGV4_REGION_ENV) or amp_region(self.base_url + "/")
        self.signed = region is not None
        if region is not None:
            self.session.auth = SigV4(region)

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
