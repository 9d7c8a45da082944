"""mosquitto (Debian's package) on 127.0.0.1, in the foreground with its own config."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet.local.procs import Service, free_port, port_open, require_binary


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener's files (PEM): the CA clients are checked against, the broker's certificate and key.
    `require_certificate`: clients must present a certificate signed by `cafile`."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False


def mosquitto(
    port: int | None = None,
    workdir: Path | None = None,
    persistence: bool = False,
    tls: TlsListener | None = None,
    tls_port: int | None = None,
) -> Service:
    """An MQTT broker; `with mosquitto() as broker: broker.port`. Not started until used.

    `persistence` keeps sessions and queued messages across a broker restart (saved on SIGTERM),
    for clients with persistent sessions; the broker then stays root so it can write its workdir.
    `tls` adds a second listener with TLS on `tls_port` (default: a free port), as a site broker on 8883 has;
    the returned service's `tls_port` names it (its `port` stays the plain listener's).
    """
    port = port or free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgecv-mosquitto-"))
    # No pid_file: as root mosquitto drops to its own user and could not write one.
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "set_tcp_nodelay true"]
    if tls is not None:
        tls_port = tls_port or free_port()
        lines += [
            f"listener {tls_port} 127.0.0.1",
            f"cafile {tls.cafile}",
            f"certfile {tls.certfile}",
            f"keyfile {tls.keyfile}",
            f"require_certificate {'true' if tls.require_certificate else 'false'}",
        ]
    if persistence or tls is not None:
        # Stays root: it writes its workdir, and reads key files a test wrote 0600.
        lines.append("user root")
    if persistence:
        lines += ["persistence true", f"persistence_location {workdir}/"]
    else:
        lines.append("persistence false")
    (workdir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else require_binary("mosquitto")
    service = Service(
        "mosquitto",
        [binary, "-c", str(workdir / "mosquitto.conf")],
        port,
        workdir=workdir,
        ready=lambda: port_open(port) and (tls_port is None or port_open(tls_port)),
    )
    service.tls_port = tls_port if tls is not None else None
    return service
