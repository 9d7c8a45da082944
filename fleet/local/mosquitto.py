"""mosquitto (Debian's package) on 127.0.0.1, in the foreground with its own config."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fleet.local.procs import Service, free_port, require_binary


def mosquitto(port: int | None = None, workdir: Path | None = None, persistence: bool = False) -> Service:
    """An MQTT broker; `with mosquitto() as broker: broker.port`. Not started until used.

    `persistence` keeps sessions and queued messages across a broker restart (saved on SIGTERM),
    for clients with persistent sessions; the broker then stays root so it can write its workdir.
    """
    port = port or free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgecv-mosquitto-"))
    # No pid_file: as root mosquitto drops to its own user and could not write one.
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "set_tcp_nodelay true"]
    if persistence:
        lines += ["persistence true", f"persistence_location {workdir}/", "user root"]
    else:
        lines.append("persistence false")
    (workdir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else require_binary("mosquitto")
    return Service("mosquitto", [binary, "-c", str(workdir / "mosquitto.conf")], port, workdir=workdir)
