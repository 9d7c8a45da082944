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
When the spool cannot write (disk full, I/O error) nothing stops: new messages wait in a bounded memory
queue (`memory_max`, oldest dropped and counted past it) and are published from there; `make_room()` (the
evidence store's shedding) is asked to free space first. Once the spool writes again the memory messages not
yet handed to paho move into it, ahead of newer ones. Messages only in memory are lost if the process dies:
that is the price of a full disk, and `disk_full` / edgecv_disk_full{what="spool"} say so.
(Residual race, accepted: a whole reconnect, which paho starts only after reconnect_min_s of backoff,
would have to happen inside one non-blocking publish() call for a message to overtake a re-sent one.)
"""

from __future__ import annotations

import json
import logging
import sqlite3
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterable
from os import PathLike

import paho.mqtt.client as mqtt

from app.alerts.spool import Spool, SpoolItem, SpoolWriteError
from app.pipeline.types import Event

log = logging.getLogger(__name__)


def tls_context(
    ca: str | None = None, cert: str | None = None, key: str | None = None, verify_hostname: bool = True
) -> ssl.SSLContext:
    """Client TLS for the broker: its certificate must chain to `ca` (None: the system CA store) and, unless
    verify_hostname is off, name the host connected to; `cert`/`key` when the broker asks for a client
    certificate. Unreadable or invalid files raise here, at start, not at the first connect."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = verify_hostname
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


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
        tls: ssl.SSLContext | None = None,
        metrics=None,
        spool_max_items: int = 1_000_000,
        spool_synchronous: str = "FULL",
        memory_max: int = 10_000,
        make_room: Callable[[], int] | None = None,
    ):
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError(f"need 0 < reconnect_min_s <= reconnect_max_s, got {reconnect_min_s}, {reconnect_max_s}")
        self.site_id = _check_level("site_id", site_id)
        self.device_id = _check_level("device_id", device_id)
        self.host, self.port, self.keepalive, self.window = host, port, keepalive, max(1, window)
        self.metrics = metrics
        self._dropped_reported = 0
        self._spool_args = (spool_dir, spool_max_items, spool_synchronous)
        self.spool: Spool | None = None
        self.memory_max, self.make_room = max(1, memory_max), make_room
        self._memory: deque[SpoolItem] = deque()  # messages the spool could not take; seq = memory number
        self._mem_next = 1
        self._mem_sent = 0  # newest memory number handed to paho
        self.memory_dropped = 0
        self.disk_full = False
        self.errors = 0  # sender iterations that failed (logged, backed off, carried on)
        self._unremoved: list[int] = []  # acknowledged, but the spool could not delete them yet
        self._open_spool()

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
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.connect_failures = 0  # attempts that failed before a CONNACK (refused socket, TLS handshake)
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
        """Messages not yet acknowledged by the broker (on disk, or in memory while the disk is full)."""
        on_disk = len(self.spool) - len(self._unremoved) if self.spool is not None else 0
        return on_disk + len(self._memory)

    @property
    def alive(self) -> bool:
        """False once started and the sender thread has died (it should not: each turn's errors are caught)."""
        return self._thread is None or self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        """Messages handed to the broker and not acknowledged yet (a subset of `pending`)."""
        with self._cv:
            return len(self._inflight)

    def wait_flushed(self, timeout: float) -> bool:
        """Wait until the broker acknowledged everything spooled; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self.pending == 0, timeout)

    def close(self, drain_timeout: float = 2.0) -> None:
        """Stop: give the broker up to drain_timeout s to acknowledge the spool; what is left stays on disk
        (messages held in memory are written to the spool if it has room again, else logged as lost)."""
        if self._thread is not None:
            if drain_timeout > 0 and self._connected:
                self.wait_flushed(drain_timeout)
            with self._cv:
                self._stopping = True
                self._cv.notify_all()
            self._thread.join(5.0)
            self._thread = None
            self.client.disconnect()
            self.client.loop_stop()
        with self._cv:
            if self._memory:
                self._mem_sent = 0  # in flight or not, the broker has not acknowledged them: keep them all
                self._store([])
            if self._memory:
                log.error("%d alert(s) lost: held in memory, the spool still cannot write", len(self._memory))
        if self.spool is not None:
            self.spool.close()

    def __enter__(self) -> AlertPublisher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------------

    def _open_spool(self) -> bool:
        if self.spool is None:
            path, max_items, synchronous = self._spool_args
            try:
                self.spool = Spool(path, max_items=max_items, synchronous=synchronous)
            except SpoolWriteError as exc:  # a fresh spool on a full disk: run from memory until it has room
                self._set_disk_full(True, exc)
                return False
        return True

    def _spool(self, messages: Iterable[tuple[str, bytes]]) -> None:
        messages = list(messages)
        if not messages:
            return
        with self._cv:
            self._store(messages)
            self._unsent = True
            self._cv.notify_all()
        self._set_depth()

    def _store(self, messages: list[tuple[str, bytes]]) -> None:
        """Commit the memory messages not yet sent, then `messages`, to the spool; what it cannot take
        stays in (or goes to) memory. Called under self._cv."""
        unsent = [m for m in self._memory if m.seq > self._mem_sent]
        rows = [(m.topic, m.payload) for m in unsent] + messages
        for attempt in (1, 2):
            try:
                if not self._open_spool():
                    raise SpoolWriteError("the spool could not be created", disk_full=True)
                self.spool.extend(rows)
            except SpoolWriteError as exc:
                if attempt == 1 and exc.disk_full and self.make_room is not None and self._shed():
                    continue
                self._set_disk_full(True, exc)
                for topic, payload in messages:
                    self._remember(topic, payload)
                return
            break
        moved = {m.seq for m in unsent}
        self._memory = deque(m for m in self._memory if m.seq not in moved)
        self._set_disk_full(False)

    def _shed(self) -> bool:
        try:
            return self.make_room() > 0
        except Exception:
            log.exception("making room for the spool failed")
            return False

    def _remember(self, topic: str, payload: bytes) -> None:
        self._memory.append(SpoolItem(self._mem_next, topic, payload))
        self._mem_next += 1
        while len(self._memory) > self.memory_max:
            # The oldest not handed to paho yet goes (in-flight ones are about to be acknowledged).
            victim = next((m for m in self._memory if m.seq > self._mem_sent), self._memory[0])
            self._memory.remove(victim)
            self.memory_dropped += 1
            if self.metrics is not None:
                self.metrics.alerts_dropped.inc()
            if self.memory_dropped in (1, 100, 10_000):
                log.error("alert memory queue full (%d): %d alert(s) dropped", self.memory_max, self.memory_dropped)

    def _set_disk_full(self, full: bool, exc: Exception | None = None) -> None:
        if full and not self.disk_full:
            log.error("alert spool cannot write (%s): alerts are held in memory (at most %d) and still published",
                      exc, self.memory_max)
        elif not full and self.disk_full:
            log.warning("alert spool writes again: alerts held in memory are on disk now")
        self.disk_full = full
        if self.metrics is not None:
            self.metrics.disk_full.labels("spool").set(1 if full else 0)

    def _can_send(self) -> bool:
        # Carried-over messages (sent in an earlier connection) are being re-sent by paho: wait for them.
        return (
            self._connected
            and self._unsent
            and len(self._inflight) < self.window
            and all(epoch == self._epoch for _, epoch in self._inflight.values())
        )

    def _pump(self) -> None:
        """Sender thread: remove acknowledged messages from the spool, keep the window of in-flight ones full.
        A failing turn (say the spool's delete on a full disk) is logged, counted and retried after a pause."""
        backoff = 0.1
        while True:
            try:
                if self._pump_once():
                    return
                backoff = 0.1
            except Exception:
                self.errors += 1
                if self.metrics is not None:
                    self.metrics.thread_errors.labels("alerts-sender").inc()
                log.exception("alert sender: one turn failed; retrying in %.1fs", backoff)
                with self._cv:
                    self._cv.wait_for(lambda: self._stopping, timeout=backoff)
                    if self._stopping:
                        return
                backoff = min(backoff * 2, 5.0)

    def _pump_once(self) -> bool:
        """One turn of the sender; True when stopping."""
        with self._cv:
            self._cv.wait_for(lambda: self._stopping or self._acked or self._can_send(), timeout=1.0)
            acked, self._acked = self._acked, []
            done = [self._inflight.pop(mid)[0] for mid in acked if mid in self._inflight]
            delivered = {-k for k in done if k < 0}  # memory messages are keyed by their negated number
            if delivered:
                self._memory = deque(m for m in self._memory if m.seq not in delivered)
            room = self.window - len(self._inflight) if not self._stopping and self._can_send() else 0
            if room:
                self._unsent = False
            epoch, after = self._epoch, self._last_seq
            remove, self._unremoved = self._unremoved + [k for k in done if k > 0], []
        if done and self.metrics is not None:
            self.metrics.alerts_published.inc(len(done))
        if remove and self.spool is not None:
            try:
                self.spool.remove(remove)
            except SpoolWriteError as exc:
                # Even a delete needs room in SQLite's journal. Acknowledged, so never re-sent by this process;
                # deleted at a later turn once the disk allows (re-sent after a restart before that: a duplicate).
                with self._cv:
                    self._unremoved = remove + self._unremoved
                self._set_disk_full(True, exc)
                remove = []
        if done or remove:
            self._set_depth()
            with self._cv:
                self._cv.notify_all()  # wake wait_flushed
        if self._stopping:
            return True
        if room:
            batch = self._peek(room, after)
            if len(batch) < room:
                with self._cv:  # picked and marked under the lock: _store must not move them meanwhile
                    fresh = [m for m in self._memory if m.seq > self._mem_sent][: room - len(batch)]
                    if fresh:
                        self._mem_sent = fresh[-1].seq
                batch += [(-m.seq, m.topic, m.payload) for m in fresh]
            self._send(batch, epoch)
        return False

    def _peek(self, room: int, after: int) -> list[tuple[int, str, bytes]]:
        if self.spool is None:
            return []
        try:
            return [(i.seq, i.topic, i.payload) for i in self.spool.peek(room, after=after)]
        except sqlite3.Error as exc:  # even a read may need room (the WAL index): memory messages still go
            self._set_disk_full(True, exc)
            return []

    def _send(self, batch: list[tuple[int, str, bytes]], epoch: int) -> None:
        sent: dict[int, tuple[int, int]] = {}
        for key, topic, payload in batch:
            # Not under self._cv: paho calls on_publish holding its own lock, which would deadlock.
            info = self.client.publish(topic, payload, qos=1)
            # NO_CONN: the connection dropped just now; paho keeps the message and sends it on reconnect.
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("publish of message %d returned %s; retrying later", key, info.rc)
                if key < 0:  # a memory message: hand it out again next turn
                    with self._cv:
                        self._mem_sent = min(self._mem_sent, -key - 1)
                break
            sent[info.mid] = (key, epoch)
        with self._cv:
            self._inflight.update(sent)
            spooled = [k for k, _ in sent.values() if k > 0]
            if spooled:
                self._last_seq = max(self._last_seq, *spooled)
            if sent:
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

    def _on_connect_fail(self, client, userdata) -> None:
        # paho retries on its own; say so once in a while (a bad CA or certificate fails every attempt).
        self.connect_failures += 1
        if self.connect_failures in (1, 10, 100) or self.connect_failures % 1000 == 0:
            log.warning("cannot connect to MQTT broker %s:%s (%d attempts; unreachable, or its TLS certificate is not "
                        "trusted); retrying", self.host, self.port, self.connect_failures)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected:
            # Our own disconnect at close() is no warning; a broker going away is.
            level = logging.INFO if self._stopping and not reason_code.is_failure else logging.WARNING
            log.log(level, "disconnected from MQTT broker %s:%s (%s)", self.host, self.port, reason_code)
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
        spool = self.spool
        if spool is None:
            return
        if self.metrics is not None:
            self.metrics.alerts_spooled.set(len(spool))
            self.metrics.alerts_in_memory.set(len(self._memory))
            # Counter mirrors the spool's own count of messages dropped when full.
            self.metrics.alerts_dropped.inc(spool.dropped - self._dropped_reported)
        self._dropped_reported = spool.dropped


def _encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
