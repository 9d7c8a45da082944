"""A TCP proxy on 127.0.0.1 that can freeze: connections stay open but no byte moves either way.

    with TcpProxy(upstream_port) as proxy:     # proxy.port forwards to 127.0.0.1:upstream_port
        proxy.freeze()                          # what a hung camera or a dead NAT looks like to the client
        proxy.thaw()

A frozen proxy still accepts new connections (and forwards nothing on them), so a client cannot tell a stall
from a slow server by connecting. Threads only; small on purpose (a test double for a network fault).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._stop.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._pipe, args=(client,), name="tcp-proxy-conn", daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._socks += [client, upstream]
        peer = {client: upstream, upstream: client}
        try:
            while not self._stop.is_set():
                if not self._flowing.wait(0.2):
                    continue  # frozen: hold both ends open, read nothing, send nothing
                ready, _, _ = select.select(list(peer), [], [], 0.2)
                for s in ready:
                    if not self._flowing.is_set():
                        break
                    data = s.recv(65536)
                    if not data:
                        return
                    peer[s].sendall(data)
        except (OSError, ValueError):  # closed under us by close()
            pass
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                for s in (client, upstream):
                    if s in self._socks:
                        self._socks.remove(s)
