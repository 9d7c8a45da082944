"""mosquitto (Debian's package) on 127.0.0.1, in the foreground with its own config."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fleet.local.procs import Service, free_port, require_binary


def mosquitto(port: int | None = None, workdir: Path | None = None) -> Service:
    """An MQTT broker; `with mosquitto() as broker: broker.port`. Not started until used."""
    port = port or free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgecv-mosquitto-"))
    conf = workdir / "mosquitto.conf"
    # No pid_file: as root mosquitto drops to its own user and could not write one.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else require_binary("mosquitto")
    return Service("mosquitto", [binary, "-c", str(conf)], port, workdir=workdir)
