"""Prometheus (Debian's package) on 127.0.0.1: a server, or an agent that remote-writes."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import requests
import yaml

from fleet.local.procs import Service, free_port, http_ok, require_binary


def prometheus(
    config: dict | str,
    port: int | None = None,
    agent: bool = False,
    remote_write_receiver: bool = False,
    rule_files: list[Path] | None = None,
    workdir: Path | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Service:
    """A Prometheus with `config` (a dict or YAML text). `rule_files` are copied next to it and listed."""
    port = port or free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgecv-prometheus-"))
    cfg = yaml.safe_load(config) if isinstance(config, str) else dict(config)
    if rule_files:
        cfg["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    argv = [
        require_binary("prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    if agent:
        # Debian's Prometheus 2.42 spells agent mode as a feature flag (--agent came with 3.0).
        argv += ["--enable-feature=agent", f"--storage.agent.path={workdir / 'agent-data'}"]
    else:
        argv += [f"--storage.tsdb.path={workdir / 'data'}"]
    if remote_write_receiver:
        argv.append("--web.enable-remote-write-receiver")
    argv += extra_args or []
    ready_url = f"http://127.0.0.1:{port}/-/ready"
    return Service("prometheus", argv, port, workdir=workdir, env=env, ready=lambda: http_ok(ready_url))


def query(base_url: str, promql: str, at: float | None = None) -> list[dict]:
    """Instant query; raises on a PromQL error (with Prometheus's message)."""
    params = {"query": promql}
    if at is not None:
        params["time"] = str(at)
    r = requests.get(f"{base_url}/api/v1/query", params=params, timeout=10)
    body = r.json()
    if body.get("status") != "success":
        raise ValueError(f"PromQL error for {promql!r}: {body.get('error')}")
    return body["data"]["result"]


def wait_for(base_url: str, promql: str, timeout: float = 15.0) -> list[dict]:
    """Poll until the query returns data (the first scrape takes ~5-6 s to be queryable)."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(base_url, promql)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.25)
