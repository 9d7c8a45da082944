"""systemd's notify protocol (sd_notify(3)) over a plain datagram socket: READY=1, WATCHDOG=1, STOPPING=1.

A few lines of socket code, not a dependency: the protocol is one datagram to $NOTIFY_SOCKET (a path, or
an abstract socket when it starts with '@'). Without $NOTIFY_SOCKET (not under systemd) every call is a no-op.
The unit's WatchdogSec= arrives as $WATCHDOG_USEC; `watchdog_interval_s` is half of it, as systemd advises.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s = int(usec) / 2e6 if wanted else None
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, state: str) -> bool:
        if not self.address or self._failed:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(state.encode(), self.address)
            return True
        except OSError as exc:  # logged once: the app runs on without systemd's notifications
            log.error("sd_notify to %s failed: %s", self.address.lstrip("\0"), exc)
            self._failed = True
            return False

    def ready(self) -> bool:
        return self.notify("READY=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
