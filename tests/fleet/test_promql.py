"""The one PromQL client, signed with SigV4 for Amazon Managed Prometheus: against a real Prometheus
behind a proxy that verifies each signature with botocore, as AMP does."""

from __future__ import annotations

import time

import pytest

from fleet.local.prometheus import prometheus
from fleet.promql import PrometheusClient, PromQLError, amp_region
from tests.support.sigv4_proxy import SigV4Proxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY, SECRET = "AKIAEDGECVTEST000001", "stand-in-secret-for-tests"


@pytest.fixture(scope="module")
def signed_prometheus(tmp_path_factory):
    server = prometheus({"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "self", "static_configs": [{"targets": ["127.0.0.1:1"]}]}]},
        workdir=tmp_path_factory.mktemp("prom"))
    with server.start(), SigV4Proxy(server.url, {KEY: SECRET}) as proxy:
        yield proxy


@pytest.fixture
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def test_an_amp_workspace_url_is_signed_for_its_region():
    assert amp_region("https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-123/") == "eu-west-1"
    assert amp_region("http://127.0.0.1:9090/") is None
    assert not PrometheusClient("http://127.0.0.1:9090").signed


def test_signed_queries_pass_and_unsigned_ones_are_refused(signed_prometheus, aws_env):
    client = PrometheusClient(signed_prometheus.url, sigv4_region="eu-west-1", timeout_s=10)
    assert client.signed
    # A scalar query and an instant query with a time (POST bodies are part of the signature).
    assert client.scalar("vector(42)") == 42.0
    assert client.instant("vector(1) + 1", time.time())[0][1] == 2.0
    assert signed_prometheus.accepted >= 2

    with pytest.raises(PromQLError):
        PrometheusClient(signed_prometheus.url, timeout_s=10).scalar("vector(1)")
    assert "missing or malformed SigV4 Authorization header" in signed_prometheus.refused


def test_a_wrong_secret_is_refused(signed_prometheus, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(PromQLError):
        PrometheusClient(signed_prometheus.url, sigv4_region="eu-west-1", timeout_s=10).scalar("vector(1)")
    assert signed_prometheus.refused[-1] == "signature does not match"
