"""A device and the central side, for real: the app's /metrics endpoint (pipeline Metrics + device health on
one registry, served by app.server.StatusServer), a Prometheus agent scraping it every second and
remote-writing to a central Prometheus (--web.enable-remote-write-receiver) that evaluates the fleet's rules.

The pipeline itself (Triton, cameras) is not started: a feeder thread drives the pipeline metrics the way the
pipeline does, so that the numbers are known. Started once for the tests in this folder.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from app.health.exporter import HealthExporter
from app.metrics import Metrics
from app.server import StatusServer
from fleet.local.procs import free_port
from fleet.local.prometheus import prometheus, wait_for
from fleet.repo import REPO_ROOT

REPO = REPO_ROOT
RULES = REPO / "roles" / "telemetry" / "files" / "rules" / "edgecv.rules.yml"
SITE, DEVICE = "lab", "dev-1"


class Feeder:
    """Drives the pipeline metrics: two cameras (gate up at ~9.5 of 10 fps, dock down), inference 20-60 ms,
    confidences 0.4-0.95, one evidence package refused once the first samples have gone out."""

    def __init__(self, m: Metrics):
        self.m, self.rng = m, random.Random(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-feeder", daemon=True)
        m.model_info.labels("synthetic-shapes", "1.0.0").set(1)
        m.triton_up.set(1)
        m.camera_up.labels("gate").set(1)
        m.camera_up.labels("dock").set(0)
        m.camera_target_fps.labels("gate").set(10)
        m.camera_target_fps.labels("dock").set(10)
        m.evidence_refused.labels("budget").inc(0)
        m.drift.labels("psi").set(0.05)
        m.drift_alarm.labels("psi").set(0)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def refuse_evidence(self) -> None:
        self.m.evidence_refused.labels("budget").inc()

    def _run(self) -> None:
        m, rng = self.m, self.rng
        while not self._stop.wait(0.1):
            for stage, lo, hi in (("capture", 0.005, 0.02), ("preprocess", 0.002, 0.008),
                                  ("batch_wait", 0.001, 0.01), ("inference", 0.02, 0.06),
                                  ("postprocess", 0.003, 0.012), ("dispatch", 0.001, 0.004), ("total", 0.05, 0.12)):
                m.observe_stage(stage, rng.uniform(lo, hi))
            m.frames.labels("gate").inc()
            m.frames_processed.labels("gate").inc()
            m.camera_fps.labels("gate").set(rng.uniform(9.2, 9.8))
            m.camera_fps.labels("dock").set(0)
            for _ in range(3):
                m.confidence.observe(rng.uniform(0.4, 0.95))
                m.predictions.labels("person").inc()
            m.queue_depth.labels("batch").set(rng.randint(0, 2))


@dataclass
class Stack:
    central_url: str
    agent_url: str
    app_url: str
    feeder: Feeder
    metrics: Metrics


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    central = prometheus({"global": {"evaluation_interval": "1s"}}, remote_write_receiver=True, rule_files=[RULES],
                         workdir=tmp_path_factory.mktemp("central"))
    central.start()
    health = feeder = server = agent = None
    try:
        health = HealthExporter(registry, source="psutil", upstream=f"127.0.0.1:{central.port}", probe_interval_s=1,
                                thermal_root=tmp_path_factory.mktemp("no-thermal")).start()
        feeder = Feeder(metrics).start()
        server = StatusServer(registry, lambda: {"loop_alive": True, "triton_ready": True, "cameras": {}},
                              host="127.0.0.1", port=free_port()).start()
        agent = prometheus(
            {
                "global": {"scrape_interval": "1s", "external_labels": {"site": SITE, "device": DEVICE}},
                "scrape_configs": [
                    {"job_name": "edgecv-app", "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}
                ],
                "remote_write": [{"url": f"{central.url}/api/v1/write", "queue_config": {"batch_send_deadline": "1s"}}],
            },
            agent=True,
            workdir=tmp_path_factory.mktemp("agent"),
        )
        agent.start()
        # The first remote-written samples are queryable centrally only after a few seconds.
        assert wait_for(central.url, f'edgecv_stage_latency_seconds_count{{device="{DEVICE}"}}', timeout=20), (
            f"no samples arrived centrally\nagent log:\n{agent.log_tail()}\ncentral log:\n{central.log_tail()}"
        )
        yield Stack(central.url, agent.url, f"http://127.0.0.1:{server.port}", feeder, metrics)
    finally:
        for part in (agent, server, feeder, health):
            if part is not None:
                part.stop()
        central.stop()
