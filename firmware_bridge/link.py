"""Host side of the microscope link: handshake, commands with ACK and retries, events, reconnect.

    with FirmwareLink("/dev/ttyACM0").open() as link:
        while (event := link.wait_event(timeout=5)) is not None:
            if isinstance(event, FieldReady):
                ...count the field...
                link.show_tally(counts, rejected, target)
                link.next_field(event.field_id)

Threads: one reader per open port (decodes frames, answers and acknowledges the
device, queues events) and one supervisor (heartbeat PING while idle, reopen
with exponential backoff after the port fails). Commands are stop-and-wait:
one at a time, each resent with the same sequence number until ACKed. Every
host command is idempotent on the device, so a command resent after a
reconnect (when the device has forgotten sequence numbers) is still safe.
"""
from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from enum import Enum

import serial

from firmware_bridge.framing import DELIMITER, Frame, FrameDecoder, encode_frame
from firmware_bridge.messages import (
    DEVICE_EVENTS, PROTOCOL_VERSION, Ack, Capability, FieldReady, Hello, MsgType, Nak, NakReason, NextField,
    HostStatus, Ping, Pong, ProtocolError, SetLight, ShowTally, TargetReached, UnknownType, from_frame, to_frame)
from firmware_bridge.transport import LinkError, open_port

log = logging.getLogger(__name__)

HOST_NAME = "edge-cellcount"
HOST_CAPABILITIES = Capability(0)
DUPLICATE_WINDOW = 16


class LinkState(Enum):
    DISCONNECTED = "disconnected"
    HANDSHAKING = "handshaking"
    READY = "ready"
    CLOSED = "closed"


class CommandRefused(LinkError):
    """The device answered a command with NAK."""


@dataclass(frozen=True)
class LinkLost:
    reason: str


@dataclass(frozen=True)
class LinkRestored:
    gap_s: float


@dataclass
class LinkStats:
    frames_in: int = 0
    frames_out: int = 0
    bad_frames: int = 0
    retries: int = 0
    duplicates: int = 0
    stale_replies: int = 0
    naks_sent: int = 0
    reconnects: int = 0
    gap_s: float = 0.0


class _Pending:
    def __init__(self, expect: set[int]) -> None:
        self.expect = expect | {MsgType.NAK}
        self.reply: Frame | None = None
        self.done = threading.Event()


class FirmwareLink:
    def __init__(self, port: str, baud: int = 115200, *, ack_timeout_s: float = 0.1, retries: int = 5,
                 command_timeout_s: float = 10.0, heartbeat_s: float = 1.0,
                 backoff_s: tuple[float, float] = (0.05, 2.0)) -> None:
        self.port, self.baud = port, baud
        self.ack_timeout_s, self.retries = ack_timeout_s, retries
        self.command_timeout_s, self.heartbeat_s = command_timeout_s, heartbeat_s
        self.backoff_s = backoff_s
        self.device: Hello | None = None
        self._events: queue.Queue = queue.Queue()
        self._decoder = FrameDecoder()
        self._stats = LinkStats()
        self._state = LinkState.DISCONNECTED
        self._state_changed = threading.Condition()
        self._serial: serial.SerialBase | None = None
        self._write_lock = threading.Lock()
        self._command_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._seq = itertools.count(1)
        self._seq_lock = threading.Lock()
        self._seen: deque[int] = deque(maxlen=DUPLICATE_WINDOW)
        self._last_field_id: int | None = None
        self._last_rx = time.monotonic()
        self._lost_at: float | None = None
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._reader: threading.Thread | None = None

    # ---- public API -------------------------------------------------------------------------
    def open(self) -> FirmwareLink:
        """Open the port and handshake; LinkError with one line when either fails."""
        if self._supervisor is not None:
            raise LinkError(f"the link to {self.port} is already open")
        port = open_port(self.port, self.baud)
        self._attach(port)
        try:
            if not self._handshake(port):
                raise LinkError(f"no answer to HELLO on {self.port} at {self.baud} baud: "
                                f"is the microscope connected and is the baud rate right?")
        except LinkError:
            self._detach()
            self._set_state(LinkState.DISCONNECTED)
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="firmware-link-supervisor",
                                            daemon=True)
        self._supervisor.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._supervisor is not None:
            self._supervisor.join()
        self._detach()
        if self._reader is not None:
            self._reader.join(timeout=1.0)
        self._set_state(LinkState.CLOSED)

    def __enter__(self) -> FirmwareLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def stats(self) -> LinkStats:
        return replace(self._stats, bad_frames=self._decoder.rejected_total)

    def wait_event(self, timeout: float | None = None):
        """The next event from the device (FieldReady, Button, DeviceError, ScanComplete,
        LinkLost, LinkRestored), or None after `timeout` seconds."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def ping(self) -> float:
        """Round-trip time of one PING, in seconds."""
        nonce = random.getrandbits(32)
        start = time.perf_counter()
        reply = self._command(Ping(nonce), MsgType.PONG)
        if Pong.unpack(reply.payload).nonce != nonce:
            raise LinkError("PONG does not echo the PING nonce")
        return time.perf_counter() - start

    def next_field(self, field_id: int) -> None:
        """Field `field_id` is done: the device moves the stage on."""
        self._command(NextField(field_id))

    def show_tally(self, counts, rejected: int, target: int) -> None:
        self._command(ShowTally(tuple(int(c) for c in counts), int(rejected), int(target)))

    def target_reached(self, counted: int) -> None:
        self._command(TargetReached(int(counted)))

    def show_status(self, code: int, text: str) -> None:
        """STATUS: tell the device about a refused field or a drift alarm (text for its display)."""
        self._command(HostStatus(int(code), text))

    def set_light(self, permille: int) -> None:
        """Illumination from 0 (off) to 1000 (full)."""
        if not 0 <= permille <= 1000:
            raise ValueError(f"light level {permille} is outside 0..1000 per mille")
        self._command(SetLight(int(permille)))

    # ---- commands ---------------------------------------------------------------------------
    def _command(self, message, expect: MsgType = MsgType.ACK) -> Frame:
        """Send until answered; waits through a reconnect, up to command_timeout_s in all."""
        frame = to_frame(message, self._next_seq())
        name = MsgType(frame.type).name
        deadline = time.monotonic() + self.command_timeout_s
        with self._command_lock:
            while True:
                port = self._wait_ready(deadline)
                if port is None:
                    raise LinkError(f"microscope link down: {name} not delivered within "
                                    f"{self.command_timeout_s:g} s")
                reply = self._exchange(port, frame, {expect})
                if reply is None:
                    self._lose(port, f"no answer to {name} after {self.retries + 1} tries")
                    continue
                if reply.type != MsgType.NAK:
                    return reply
                reason = _nak_reason(reply)
                if reason == NakReason.HELLO_FIRST.name:
                    self._lose(port, "the device asks for a new handshake")
                    continue
                raise CommandRefused(f"the microscope refused {name}: {reason}")

    def _exchange(self, port, frame: Frame, expect: set[int]) -> Frame | None:
        """One stop-and-wait exchange on `port`: the reply, or None when every try timed out
        or the port was dropped."""
        pending = _Pending(expect)
        self._pending[frame.seq] = pending
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self._stats.retries += 1
                    log.info("no answer to %s seq %d, resending", MsgType(frame.type).name, frame.seq)
                if not self._send(frame, port):
                    return None
                if pending.done.wait(self.ack_timeout_s):
                    return pending.reply
            return None
        finally:
            del self._pending[frame.seq]

    def _handshake(self, port) -> bool:
        self._set_state(LinkState.HANDSHAKING)
        self._seen.clear()
        hello = Hello(PROTOCOL_VERSION, HOST_CAPABILITIES, HOST_NAME)
        reply = self._exchange(port, to_frame(hello, self._next_seq()), {MsgType.HELLO})
        if reply is None:
            return False
        if reply.type == MsgType.NAK:
            raise LinkError(f"the microscope refused protocol version {PROTOCOL_VERSION}: {_nak_reason(reply)}")
        try:
            device = Hello.unpack(reply.payload)
        except ProtocolError as exc:
            raise LinkError(f"unreadable HELLO from the microscope: {exc}") from None
        if device.version != PROTOCOL_VERSION:
            raise LinkError(f"the microscope speaks protocol version {device.version}, "
                            f"this host speaks {PROTOCOL_VERSION}")
        self.device = device
        log.info("microscope link ready: %r, protocol %d, capabilities %s", device.name, device.version,
                 "|".join(c.name for c in Capability if c & device.capabilities) or "none")
        self._set_state(LinkState.READY)
        return True

    def _next_seq(self) -> int:
        with self._seq_lock:
            return next(self._seq) % 256

    # ---- port, reader and supervisor --------------------------------------------------------
    def _attach(self, port: serial.SerialBase) -> None:
        self._decoder.reset()
        self._serial = port
        self._last_rx = time.monotonic()
        self._reader = threading.Thread(target=self._read_loop, args=(port,), name="firmware-link-reader",
                                        daemon=True)
        self._reader.start()

    def _detach(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            port.close()

    def _lose(self, port, reason: str) -> None:
        """The port `port` failed: drop it (once) and let the supervisor reconnect."""
        with self._state_changed:
            if port is None or port is not self._serial or self._closing.is_set():
                return
            self._detach()
            self._lost_at = time.monotonic()
            self._state = LinkState.DISCONNECTED
            self._state_changed.notify_all()
        log.warning("microscope link lost: %s", reason)
        self._events.put(LinkLost(reason))
        self._wake.set()

    def _read_loop(self, port: serial.SerialBase) -> None:
        while port is self._serial:
            try:
                data = port.read(port.in_waiting or 1)
            except Exception as exc:        # whatever a failing port raises, the port is gone
                self._lose(port, f"serial read failed: {' '.join(str(exc).split())}")
                return
            for frame in self._decoder.feed(data):
                self._last_rx = time.monotonic()
                self._stats.frames_in += 1
                self._dispatch(frame)

    def _send(self, frame: Frame, port=None) -> bool:
        """Write one frame on `port` (default: the current one) while it is the current port."""
        port = self._serial if port is None else port
        if port is None or port is not self._serial:
            return False
        data = encode_frame(frame)
        if frame.type == MsgType.HELLO:
            data = bytes([DELIMITER]) + data    # ends any partial frame the device holds
        try:
            with self._write_lock:
                port.write(data)
        except Exception as exc:            # whatever a failing port raises, the port is gone
            self._lose(port, f"serial write failed: {' '.join(str(exc).split())}")
            return False
        self._stats.frames_out += 1
        return True

    def _dispatch(self, frame: Frame) -> None:
        pending = self._pending.get(frame.seq)
        if frame.type in (MsgType.ACK, MsgType.NAK, MsgType.PONG, MsgType.HELLO):
            if pending is not None and frame.type in pending.expect and not pending.done.is_set():
                pending.reply = frame
                pending.done.set()
            else:
                self._stats.stale_replies += 1
            return
        try:
            message = from_frame(frame)
        except ProtocolError as exc:
            reason = NakReason.UNKNOWN_TYPE if isinstance(exc, UnknownType) else NakReason.BAD_PAYLOAD
            log.warning("refusing a frame from the microscope: %s", exc)
            self._stats.naks_sent += 1
            self._send(to_frame(Nak(reason), frame.seq))
            return
        if isinstance(message, Ping):
            self._send(to_frame(Pong(message.nonce), frame.seq))
        elif frame.type in DEVICE_EVENTS:
            self._send(to_frame(Ack(), frame.seq))
            self._deliver(message, frame.seq)
        else:
            self._stats.naks_sent += 1
            self._send(to_frame(Nak(NakReason.UNKNOWN_TYPE), frame.seq))

    def _deliver(self, message, seq: int) -> None:
        if seq in self._seen:
            self._stats.duplicates += 1
            log.info("dropped a resent %s (seq %d)", type(message).__name__, seq)
            return
        self._seen.append(seq)
        if isinstance(message, FieldReady):
            if message.field_id == self._last_field_id:
                self._stats.duplicates += 1
                log.info("field %d announced again after a reconnect; not delivered twice", message.field_id)
                return
            self._last_field_id = message.field_id
        self._events.put(message)

    def _supervise(self) -> None:
        backoff = self.backoff_s[0]
        while not self._closing.is_set():
            if self._state is LinkState.READY:
                self._wake.wait(self.heartbeat_s)
                self._wake.clear()
                self._heartbeat()
                continue
            if self._closing.wait(backoff):
                return
            if self._reconnect():
                backoff = self.backoff_s[0]
            else:
                backoff = min(2 * backoff, self.backoff_s[1])

    def _heartbeat(self) -> None:
        port = self._serial
        if (self._state is not LinkState.READY or time.monotonic() - self._last_rx < self.heartbeat_s
                or not self._command_lock.acquire(blocking=False)):
            return
        try:
            reply = self._exchange(port, to_frame(Ping(0), self._next_seq()), {MsgType.PONG})
            if reply is None:
                self._lose(port, f"no answer to heartbeat PING after {self.retries + 1} tries")
            elif reply.type == MsgType.NAK:
                self._lose(port, f"the device answered the heartbeat with {_nak_reason(reply)} (a reset?)")
        finally:
            self._command_lock.release()

    def _reconnect(self) -> bool:
        try:
            port = open_port(self.port, self.baud)
        except LinkError as exc:
            log.info("reconnect: %s", exc)
            return False
        self._attach(port)
        try:
            ready = self._handshake(port)
        except LinkError as exc:
            log.warning("reconnect: %s", exc)
            ready = False
        if not ready:
            self._detach()
            self._set_state(LinkState.DISCONNECTED)
            return False
        gap = time.monotonic() - (self._lost_at or time.monotonic())
        self._stats.reconnects += 1
        self._stats.gap_s += gap
        log.warning("microscope link restored after a %.2f s gap (reconnect %d)", gap, self._stats.reconnects)
        self._events.put(LinkRestored(gap))
        return True

    def _set_state(self, state: LinkState) -> None:
        with self._state_changed:
            self._state = state
            self._state_changed.notify_all()

    def _wait_ready(self, deadline: float):
        """The current port once the link is ready, or None at the deadline."""
        with self._state_changed:
            while self._state is not LinkState.READY:
                if self._closing.is_set():
                    raise LinkError(f"the link to {self.port} is closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._state_changed.wait(left)
            return self._serial


def _nak_reason(frame: Frame) -> str:
    try:
        return NakReason(Nak.unpack(frame.payload).reason).name
    except (ProtocolError, ValueError):
        return "unreadable NAK"
