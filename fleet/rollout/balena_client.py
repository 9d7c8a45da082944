"""Build a balena-sdk client whose every request is bounded: a timeout, and retries with backoff that end.

The SDK (17.x) sends through `requests` without a timeout and, with retry_rate_limited_request, retries a 429
forever. We keep the SDK (its models build the OData queries) but give its pine client our own transport:
`PinejsClientCore._request(method, url, body)` is pine-client's transport hook, so replacing it on the
instance changes nothing else. A custom endpoint (a local API double, a staging API) is set on both the
settings and the pine prefix, which the SDK fixes at construction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin

import requests
from balena import Balena
from balena import __version__ as sdk_version
from balena.exceptions import RequestError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

DEFAULT_API = "https://api.balena-cloud.com/"
TRANSIENT = {429, 500, 502, 503, 504}


class BalenaUnavailable(RuntimeError):
    """The API kept failing (or rate limiting) past our retry budget; nothing half-done is assumed."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    max_total_s: float = 180.0  # give up on one request after this much waiting
    backoff_s: float = 1.0  # first wait without Retry-After; doubles, capped at max_wait_s
    max_wait_s: float = 60.0
    timeout_s: tuple[float, float] = (5.0, 60.0)  # connect, read


def _why(state: RetryCallState) -> str:
    exc = state.outcome.exception() if state.outcome else None
    return f"HTTP {exc.status_code}" if isinstance(exc, RequestError) else type(exc).__name__


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, RequestError):
        return exc.status_code in TRANSIENT
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


class BoundedTransport:
    """pine-client's `_request` with a timeout, Retry-After aware backoff and a bounded number of tries."""

    def __init__(self, api_key: str | None, policy: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = lambda line: None):
        self.api_key = api_key
        self.policy = policy
        self.sleep = sleep
        self.log = log
        self.session = requests.Session()
        self.sent = 0  # requests sent, retries included
        self.retried = 0
        self.waited_s = 0.0

    def __call__(self, method: str, url: str, body: object | None = None) -> object:
        p = self.policy
        retrying = Retrying(
            stop=stop_after_attempt(p.attempts) | stop_after_delay(p.max_total_s),
            wait=self._wait,
            retry=retry_if_exception(_transient),
            sleep=self._sleep,
            before_sleep=lambda state: self.log(
                f"{method} {url.split('?')[0]}: {_why(state)}; retry {state.attempt_number} "
                f"in {state.next_action.sleep if state.next_action else 0:.0f}s"),
            reraise=True,
        )
        try:
            return retrying(self._once, method, url, body)
        except RequestError as exc:
            if exc.status_code in TRANSIENT:
                raise BalenaUnavailable(f"{method} {url.split('?')[0]}: HTTP {exc.status_code} after "
                                        f"{retrying.statistics.get('attempt_number')} attempts") from exc
            raise
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise BalenaUnavailable(f"{method} {url.split('?')[0]}: {exc.__class__.__name__}") from exc

    def _once(self, method: str, url: str, body: object | None) -> object:
        key = self.api_key or os.environ.get("BALENA_API_KEY")
        headers = {"X-Balena-Client": f"balena-python-sdk/{sdk_version}"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.sent += 1
        r = self.session.request(method, url, json=body, headers=headers, timeout=self.policy.timeout_s)
        if r.ok:
            try:
                return r.json()
            except ValueError:
                return r.content.decode()
        exc = RequestError(body=r.text, status_code=r.status_code)
        exc.retry_after = r.headers.get("Retry-After")  # type: ignore[attr-defined]
        raise exc

    def _wait(self, state: RetryCallState) -> float:
        p = self.policy
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None and str(retry_after).isdigit():
            return min(float(retry_after), p.max_wait_s)
        return min(p.backoff_s * 2 ** (state.attempt_number - 1), p.max_wait_s)

    def _sleep(self, seconds: float) -> None:
        self.retried += 1
        self.waited_s += seconds
        self.sleep(seconds)


def connect(api_url: str | None = None, api_key: str | None = None, policy: RetryPolicy = RetryPolicy(),
            sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = lambda line: None) -> Balena:
    """A balena-sdk client for `api_url` (default balena-cloud), authenticated with `api_key`
    (default: $BALENA_API_KEY), keeping nothing on disk."""
    api_url = api_url or os.environ.get("EDGECV_BALENA_API") or DEFAULT_API
    if not api_url.endswith("/"):
        api_url += "/"
    sdk = Balena({"data_directory": False, "retry_rate_limited_request": False})
    sdk.settings.set("api_endpoint", api_url)
    sdk.pine.api_prefix = urljoin(api_url, str(sdk.settings.get("api_version"))) + "/"
    sdk.pine._request = BoundedTransport(api_key, policy, sleep, log)  # pine-client's transport hook
    return sdk


def transport(sdk: Balena) -> BoundedTransport:
    return sdk.pine._request  # type: ignore[return-value]
