"""Fetching an item's image from a remote evidence store, without becoming a proxy into the network (SSRF).

A device chooses `image_url`, so the service fetches only from the configured evidence stores
(`image_url_allow`: URL prefixes, i.e. scheme + host + port + path such as a bucket), never from an
address that resolves to loopback, link-local (cloud metadata at 169.254.169.254), unspecified or
multicast, follows no redirect, reads at most `max_bytes`, and keeps the reply only if it decodes as
an image. The same allow-list is checked when an item is ingested, so a refused URL is never stored.
"""

from __future__ import annotations

import ipaddress
import posixpath
import socket
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import requests


class FetchRefused(ValueError):
    pass


def _normalised(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(f"{url}: only http(s) URLs with a host")
    if parts.username or parts.password:
        raise FetchRefused(f"{url}: credentials in the URL are not allowed")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = unquote(parts.path or "/")
    norm = posixpath.normpath(path) + ("/" if path.endswith("/") else "")
    if ".." in path.split("/") or norm.startswith("//"):
        raise FetchRefused(f"{url}: '..' in the path")
    return parts.scheme, parts.hostname.lower().rstrip("."), port, norm


def origin(url: str) -> str:
    """scheme://host:port of a URL (what a CSP source names)."""
    scheme, host, port, _ = _normalised(url)
    return f"{scheme}://{host}:{port}"


def allowed(url: str, allow: list[str]) -> bool:
    """Whether `url` lies under one of the allowed prefixes (same scheme, host and port; path prefix)."""
    scheme, host, port, path = _normalised(url)
    for prefix in allow:
        p_scheme, p_host, p_port, p_path = _normalised(prefix)
        if (scheme, host, port) == (p_scheme, p_host, p_port) and (
                path == p_path.rstrip("/") or path.startswith(p_path if p_path.endswith("/") else p_path + "/")):
            return True
    return False


def check_url(url: str, allow: list[str]) -> None:
    if not allow:
        raise FetchRefused(f"{url}: this server fetches from no evidence store (image_url_allow is empty)")
    if not allowed(url, allow):
        raise FetchRefused(f"{url}: not inside an allowed evidence store ({', '.join(allow)})")


Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def check_addresses(host: str, port: int, resolver: Resolver = resolve) -> None:
    try:
        addresses = resolver(host, port)
    except OSError as exc:
        raise FetchRefused(f"{host}: cannot resolve ({exc})") from exc
    for a in addresses:
        ip = ipaddress.ip_address(a.split("%")[0])
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            raise FetchRefused(f"{host} resolves to {ip}: loopback/link-local addresses are never fetched")


def fetch_image(url: str, allow: list[str], max_bytes: int, timeout_s: float = 30.0,
                resolver: Resolver = resolve, http: requests.Session | None = None) -> bytes:
    """The image's bytes, or FetchRefused / requests.RequestException saying why not."""
    check_url(url, allow)
    _, host, port, _ = _normalised(url)
    check_addresses(host, port, resolver)
    get = (http or requests).get
    with get(url, timeout=timeout_s, allow_redirects=False, stream=True) as r:
        if r.is_redirect:
            raise FetchRefused(f"{url}: answered a redirect to {r.headers.get('location')!r}; not followed")
        r.raise_for_status()
        data = bytearray()
        for chunk in r.iter_content(64 << 10):
            data += chunk
            if len(data) > max_bytes:
                raise FetchRefused(f"{url}: more than {max_bytes} bytes")
    if cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR) is None:
        raise FetchRefused(f"{url}: the reply is not an image")
    return bytes(data)
