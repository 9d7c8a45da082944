"""MQTT alerts with an on-disk spool: at-least-once, in order, nothing lost while the broker is away.

Topics (QoS 1, not retained):
    edgecv/<site>/<device>/<camera>/events   rule events (`publish_event`)
    edgecv/<site>/<device>/drift             drift events (`publish("drift", payload)`)
    edgecv/<site>/<device>/<suffix>          anything else through `publish(suffix, payload)`

Event payload (UTF-8 JSON object, app.pipeline.types.Event.to_payload, schema 1):
    schema     1
    event_id   UUIDv7 string; unique per event, unchanged on re-send: consumers de-duplicate on it
    time       Unix seconds (float) when the frame was captured
    site, device, camera   ids
    rule       the rule's name;  kind: zone_intrusion | line_crossing | dwell | drift
    class      class name;  score: detection confidence (4 decimals)
    box        [x1, y1, x2, y2] frame pixels (1 decimal);  track_id: tracker id, per camera
    model      "name@version" of the model that saw it;  frame_seq: camera frame number (-1 unknown)
    extra      optional object, by kind: {"zone"}, {"line", "direction": "a_to_b"|"b_to_a"}, {"zone", "dwell_s"}

Delivery: every message is first committed to the spool (app.alerts.spool) and leaves it only when the broker's
PUBACK for it arrives. A sender thread keeps up to `window` of the oldest spooled messages in flight (a
sliding window, in spool order). When the connection drops, paho keeps the unacknowledged ones and re-sends
them, in order, first thing after the reconnect; the sender hands paho nothing new until those carried-over
messages are acknowledged, so nothing overtakes them. So messages reach the broker in spool order, across
broker outages and process restarts (a new publisher on the same spool directory re-sends what is left).
A message may arrive twice (PUBACK lost, or a crash between PUBACK and the spool delete): consumers
de-duplicate by event_id. Memory stays bounded: at most `window` messages are held outside the spool.
(Residual race, accepted: a whole reconnect, which paho starts only after reconnect_min_s of backoff,
would have to happen inside one non-blocking publish() call for a message to overtake a re-sent one.)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from os import PathLike

import paho.mqtt.client as mqtt

from app.alerts.spool import Spool
from app.pipeline.types import Event

log = logging.getLogger(__name__)


def _check_level(what: str, value: str, allow_slash: bool = False) -> str:
    levels = value.split("/") if allow_slash else [value]
    if not value or any(not lv or "+" in lv or "#" in lv or (not allow_slash and "/" in lv) for lv in levels):
        raise ValueError(f"{what} {value!r} cannot be used in an MQTT topic (empty level, '/', '+' or '#')")
    return value


class AlertPublisher:
    """Publishes events through a durable spool to an MQTT broker (see the module docstring).

        with AlertPublisher("127.0.0.1", 1883, "site-a", "jetson-01", "/var/lib/edgecv/spool") as pub:
            pub.publish_events(events)

    `metrics` (app.metrics.Metrics), when given, gets alerts_published, alerts_spooled (spool depth) and
    mqtt_connected. Reconnects back off from reconnect_min_s doubling to reconnect_max_s.
    """

    def __init__(
        self,
        host: str,
        port: int,
        site_id: str,
        device_id: str,
        spool_dir: str | PathLike,
        *,
        client_id: str | None = None,
        keepalive: int = 30,
        window: int = 32,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        metrics=None,
        spool_max_items: int = 1_000_000,
        spool_synchronous: str = "FULL",
    ):
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError(f"need 0 < reconnect_min_s <= reconnect_max_s, got {reconnect_min_s}, {reconnect_max_s}")
        self.site_id = _check_level("site_id", site_id)
        self.device_id = _check_level("device_id", device_id)
        self.host, self.port, self.keepalive, self.window = host, port, keepalive, max(1, window)
        self.metrics = metrics
        self._dropped_reported = 0
        self.spool = Spool(spool_dir, max_items=spool_max_items, synchronous=spool_synchronous)

        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgecv-{site_id}-{device_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,  # the spool, not the broker session, is what keeps messages
        )
        self.client.max_inflight_messages_set(self.window)
        self.client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        if username:
            self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

        self._cv = threading.Condition()
        self._connected = False
        self._stopping = False
        self._unsent = True  # the spool may hold messages not handed to paho yet (leftovers from a past run)
        self._epoch = 0  # connections made so far
        self._inflight: dict[int, tuple[int, int]] = {}  # paho mid -> (spool seq, epoch it was sent in)
        self._last_seq = 0  # newest spool seq handed to paho
        self._acked: list[int] = []  # mids acknowledged, not yet removed from the spool
        self._thread: threading.Thread | None = None
        self._set_depth()

    # --- public API -------------------------------------------------------------------------------

    def start(self) -> AlertPublisher:
        """Connect in the background (retrying with backoff) and start sending the spool."""
        if self._thread is None:
            self.client.connect_async(self.host, self.port, self.keepalive)
            self.client.loop_start()
            self._thread = threading.Thread(target=self._pump, name="alerts-sender", daemon=True)
            self._thread.start()
        return self

    def topic(self, suffix: str) -> str:
        return f"edgecv/{self.site_id}/{self.device_id}/{_check_level('topic suffix', suffix, allow_slash=True)}"

    def publish_event(self, event: Event) -> None:
        self.publish_events([event])

    def publish_events(self, events: Iterable[Event]) -> None:
        """Spool events (one disk sync for all of them) on edgecv/<site>/<device>/<camera>/events."""
        self._spool(
            (self.topic(f"{_check_level('camera_id', e.camera_id)}/events"), _encode(e.to_payload())) for e in events
        )

    def publish(self, topic_suffix: str, payload: dict) -> None:
        """Spool any JSON payload on edgecv/<site>/<device>/<topic_suffix>, e.g. publish("drift", {...})."""
        self._spool([(self.topic(topic_suffix), _encode(payload))])

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker (all of them are on disk)."""
        return len(self.spool)

    @property
    def in_flight(self) -> int:
        """Messages handed to the broker and not acknowledged yet (a subset of `pending`)."""
        with self._cv:
            return len(self._inflight)

    def wait_flushed(self, timeout: float) -> bool:
        """Wait until the broker acknowledged everything spooled; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: len(self.spool) == 0, timeout)

    def close(self, drain_timeout: float = 2.0) -> None:
        """Stop: give the broker up to drain_timeout s to acknowledge the spool; what is left stays on disk."""
        if self._thread is not None:
            if drain_timeout > 0 and self._connected:
                self.wait_flushed(drain_timeout)
            with self._cv:
                self._stopping = True
                self._cv.notify_all()
            self._thread.join()
            self._thread = None
            self.client.disconnect()
            self.client.loop_stop()
        self.spool.close()

    def __enter__(self) -> AlertPublisher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------------

    def _spool(self, messages: Iterable[tuple[str, bytes]]) -> None:
        if self.spool.extend(list(messages)):
            self._set_depth()
            with self._cv:
                self._unsent = True
                self._cv.notify_all()

    def _can_send(self) -> bool:
        # Carried-over messages (sent in an earlier connection) are being re-sent by paho: wait for them.
        return (
            self._connected
            and self._unsent
            and len(self._inflight) < self.window
            and all(epoch == self._epoch for _, epoch in self._inflight.values())
        )

    def _pump(self) -> None:
        """Sender thread: remove acknowledged messages from the spool, keep the window of in-flight ones full."""
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stopping or self._acked or self._can_send(), timeout=1.0)
                acked, self._acked = self._acked, []
                done = [self._inflight.pop(mid)[0] for mid in acked if mid in self._inflight]
                room = self.window - len(self._inflight) if not self._stopping and self._can_send() else 0
                if room:
                    self._unsent = False
                epoch, after = self._epoch, self._last_seq
            if done:
                self.spool.remove(done)
                self._set_depth()
                if self.metrics is not None:
                    self.metrics.alerts_published.inc(len(done))
                with self._cv:
                    self._cv.notify_all()  # wake wait_flushed
            if self._stopping:
                return
            if room:
                self._send(self.spool.peek(room, after=after), epoch)

    def _send(self, batch: list, epoch: int) -> None:
        sent: dict[int, tuple[int, int]] = {}
        for item in batch:
            # Not under self._cv: paho calls on_publish holding its own lock, which would deadlock.
            info = self.client.publish(item.topic, item.payload, qos=1)
            # NO_CONN: the connection dropped just now; paho keeps the message and sends it on reconnect.
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("publish of spooled message %d returned %s; retrying later", item.seq, info.rc)
                break
            sent[info.mid] = (item.seq, epoch)
        with self._cv:
            self._inflight.update(sent)
            if sent:
                self._last_seq = max(seq for seq, _ in sent.values())
                self._unsent = True  # more may be waiting behind these
            self._cv.notify_all()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%s refused the connection: %s", self.host, self.port, reason_code)
            return
        log.info("connected to MQTT broker %s:%s", self.host, self.port)
        with self._cv:
            self._epoch += 1
        self._set_connected(True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected:
            log.warning("disconnected from MQTT broker %s:%s (%s)", self.host, self.port, reason_code)
        self._set_connected(False)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cv:
            self._acked.append(mid)
            self._cv.notify_all()

    def _set_connected(self, up: bool) -> None:
        with self._cv:
            self._connected = up
            self._cv.notify_all()
        if self.metrics is not None:
            self.metrics.mqtt_connected.set(1 if up else 0)

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.alerts_spooled.set(len(self.spool))
            # Counter mirrors the spool's own count of messages dropped when full.
            self.metrics.alerts_dropped.inc(self.spool.dropped - self._dropped_reported)
        self._dropped_reported = self.spool.dropped


def _encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
