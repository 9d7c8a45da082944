"""The loop's systemd watchdog: WATCHDOG=1 (over a real notify socket) only while every thread lives;
a dead thread shows in the pipeline's status (and so in /healthz)."""

from __future__ import annotations

import socket
import threading

from app.config import load_config
from app.runner import Pipeline
from app.sdnotify import Notifier
from tests.app.conftest import GOOD, write


def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(0.5)
    return sock, path


def received(sock) -> list[str]:
    out = []
    try:
        while True:
            out.append(sock.recv(256).decode())
            sock.settimeout(0.05)
    except TimeoutError:
        return out


def test_watchdog_pings_only_while_every_thread_lives(site, tmp_path):
    sock, path = notify_socket(tmp_path)
    pipe = Pipeline(load_config(write(site, GOOD)))
    pipe.notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # WatchdogSec=0.1
    pipe.step(idle_s=0.06)
    pipe.step(idle_s=0.06)
    assert "WATCHDOG=1" in received(sock)
    assert pipe.status()["dead_threads"] == []

    worker = threading.Thread(target=lambda: None, name="evidence-uploader")
    worker.start()
    worker.join()  # a thread that ended: what an uncaught exception leaves behind
    pipe.threads["evidence-uploader"] = worker.is_alive
    for _ in range(3):
        pipe.step(idle_s=0.06)
    assert received(sock) == []  # no ping: systemd restarts us after WatchdogSec
    assert pipe.status()["dead_threads"] == ["evidence-uploader"]
    sock.close()


def test_notifier_is_silent_without_systemd():
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval_s is None and not n.watchdog()
