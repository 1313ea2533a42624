"""A firmware simulator that behaves like the microscope's MCU on a pseudo-terminal (PROTOCOL.md).

The simulator owns the master side of a pty; the host opens the slave path with
pyserial as it would open /dev/ttyACM0. It has a stage that visits a
serpentine grid of fields with a settle time, a light, start/stop buttons,
optional line noise (bit flips and dropped bytes, seeded) in both directions,
and optionally the pace of a real UART (`baud`: 10 bit times per byte).
`unplug()` closes the pty as a pulled cable would; `replug()` makes a new one
(and re-points `link_path`, a stable symlink like /dev/serial/by-id/...).
"""
from __future__ import annotations

import logging
import math
import os
import queue
import random
import select
import signal
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass

from firmware_bridge.framing import Frame, FrameDecoder, encode_frame
from firmware_bridge.messages import (
    HOST_COMMANDS, PROTOCOL_VERSION, Ack, Button, ButtonId, Capability, FieldReady, Hello, HostStatus, Nak,
    NakReason, NextField, Ping, Pong, PayloadError, ScanComplete, SetLight, ShowTally, TargetReached,
    UnknownType, from_frame, to_frame)

log = logging.getLogger(__name__)

POLL_S = 0.005
SLOW_RETRY_S = 1.0
CAPABILITIES = Capability.STAGE | Capability.FOCUS | Capability.LIGHT | Capability.DISPLAY | Capability.BUTTONS


@dataclass
class _Outgoing:
    frame: Frame
    tries: int = 0
    resend_at: float = 0.0


class FirmwareSimulator:
    def __init__(self, fields: int = 12, *, settle_s: float = 0.05, noise: float = 0.0, seed: int = 0,
                 link_path: str | None = None, pitch_um: int = 350, retry_s: float = 0.1, retries: int = 5,
                 ack_delay_s: float = 0.0, baud: int | None = None) -> None:
        self.fields, self.settle_s, self.noise, self.baud = fields, settle_s, noise, baud
        self.link_path, self.pitch_nm = link_path, pitch_um * 1000
        self.retry_s, self.retries, self.ack_delay_s = retry_s, retries, ack_delay_s
        # What a test or a bench user can watch:
        self.field = 0                          # the stage's current field
        self.light = 500                        # per mille
        self.tallies: list[ShowTally] = []      # every SHOW_TALLY carried out, in order
        self.statuses: list[HostStatus] = []    # every STATUS shown, in order
        self.counted_at_target: int | None = None
        self.scan_over = False                  # target reached or fields exhausted: the stage stays put
        self.moves = 0
        self.handshakes = 0
        self.duplicates = 0
        self.corrupted = 0
        self.decoder = FrameDecoder()

        self._rng = random.Random(seed)
        self._calls: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._running = False
        self._master: int | None = None
        self._slave: int | None = None
        self._session = False                   # a HELLO was answered since the last plug-in
        self._seen: deque[int] = deque(maxlen=16)
        self._seq = 0
        self._outbox: deque[_Outgoing] = deque()
        self._delayed: list[tuple[float, bytes]] = []
        self._started = self._ready = self._release = self._halted = False
        self._move_due: float | None = None

    # ---- control, from any thread ---------------------------------------------------------
    @property
    def path(self) -> str:
        """Where the host connects: `link_path` when given, else the pty's slave device."""
        if self.link_path:
            return self.link_path
        if self._slave is None:
            raise RuntimeError("the simulator is unplugged")
        return os.ttyname(self._slave)

    def start(self) -> FirmwareSimulator:
        if self.link_path and os.path.lexists(self.link_path) and not os.path.islink(self.link_path):
            raise FileExistsError(f"{self.link_path} exists and is not a symlink; choose another link path")
        self._plug()
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="firmware-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join()
        self._unplug()

    def __enter__(self) -> FirmwareSimulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def unplug(self) -> None:
        self._call(self._unplug)

    def replug(self) -> None:
        self._call(self._plug)

    def press(self, button: ButtonId) -> None:
        self._call(lambda: self._press(ButtonId(button)))

    def send_raw(self, data: bytes) -> None:
        """Write bytes to the host as they are (no noise): for injecting faults."""
        self._call(lambda: self._write(data, noisy=False))

    def _call(self, fn) -> None:
        if not self._running:
            fn()
            return
        done = threading.Event()
        self._calls.put((fn, done))
        done.wait()

    # ---- the MCU's main loop ----------------------------------------------------------------
    def _serve(self) -> None:
        # Ctrl-C must wake the main thread from its blocking read of stdin (`edge firmware-sim`); the
        # kernel may hand a process signal to any thread that does not block it, so this one blocks them.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while self._running:
            while not self._calls.empty():
                fn, done = self._calls.get()
                fn()
                done.set()
            now = time.monotonic()
            self._move_stage(now)
            self._send_due(now)
            self._receive()

    def _receive(self) -> None:
        if self._master is None:
            time.sleep(POLL_S)
            return
        if not select.select([self._master], [], [], POLL_S)[0]:
            return
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return
        self._pace(len(data))
        for frame in self.decoder.feed(self._corrupt(data)):
            self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        if frame.type in (Ack.TYPE, Nak.TYPE):
            if self._outbox and self._outbox[0].frame.seq == frame.seq:
                self._outbox.popleft()
            return
        try:
            message = from_frame(frame)
        except UnknownType:
            return self._reply(Nak(NakReason.UNKNOWN_TYPE), frame.seq)
        except PayloadError:
            return self._reply(Nak(NakReason.BAD_PAYLOAD), frame.seq)
        if isinstance(message, Hello):
            return self._hello(message, frame.seq)
        if frame.type not in HOST_COMMANDS | {Ping.TYPE}:
            return self._reply(Nak(NakReason.UNKNOWN_TYPE), frame.seq)
        if not self._session:
            return self._reply(Nak(NakReason.HELLO_FIRST), frame.seq)
        if isinstance(message, Ping):
            return self._reply(Pong(message.nonce), frame.seq)
        if frame.seq in self._seen:
            self.duplicates += 1
            return self._reply(Ack(), frame.seq)
        refusal = self._execute(message)
        if refusal is not None:
            return self._reply(Nak(refusal), frame.seq)
        self._seen.append(frame.seq)
        self._reply(Ack(), frame.seq)

    def _hello(self, hello: Hello, seq: int) -> None:
        if hello.version != PROTOCOL_VERSION:
            return self._reply(Nak(NakReason.VERSION), seq)
        self._session = True
        self._seen.clear()
        self.handshakes += 1
        self._reply(Hello(PROTOCOL_VERSION, CAPABILITIES, "edge firmware-sim"), seq)
        for item in self._outbox:
            item.tries, item.resend_at = 0, 0.0
        if not self._started:
            self._started = True
            self._move_due = time.monotonic() + self.settle_s
        elif self._ready and not any(o.frame.type == FieldReady.TYPE for o in self._outbox):
            self._queue(self._field_ready())      # the host may have missed it while unplugged

    def _execute(self, message) -> NakReason | None:
        if isinstance(message, NextField):
            if message.field_id == self.field and self._ready:
                self._ready, self._release = False, True
        elif isinstance(message, SetLight):
            if message.permille > 1000:
                return NakReason.BAD_PAYLOAD
            self.light = message.permille
        elif isinstance(message, ShowTally):
            self.tallies.append(message)
        elif isinstance(message, HostStatus):
            self.statuses.append(message)
        elif isinstance(message, TargetReached):
            self.counted_at_target = message.counted
            self.scan_over = True
        return None

    def _move_stage(self, now: float) -> None:
        if self.scan_over:
            return
        if self._release and not self._halted:
            self._release = False
            self.field += 1
            self.moves += 1
            self._move_due = now + self.settle_s
        if self._move_due is not None and now >= self._move_due:
            self._move_due = None
            if self.field < self.fields:
                self._ready = True
                self._queue(self._field_ready())
            else:
                self.scan_over = True
                self._queue(ScanComplete(self.fields))

    def _field_ready(self) -> FieldReady:
        columns = math.ceil(math.sqrt(self.fields))
        row, column = divmod(self.field, columns)
        if row % 2:
            column = columns - 1 - column           # serpentine: no flyback between rows
        focus_nm = round(1500 * math.sin(0.7 * self.field))
        return FieldReady(self.field, column * self.pitch_nm, row * self.pitch_nm, focus_nm)

    def _press(self, button: ButtonId) -> None:
        self._halted = button == ButtonId.STOP
        self._queue(Button(button))

    # ---- sending ----------------------------------------------------------------------------
    def _queue(self, message) -> None:
        self._seq = (self._seq + 1) % 256
        self._outbox.append(_Outgoing(to_frame(message, self._seq)))

    def _reply(self, message, seq: int) -> None:
        data = encode_frame(to_frame(message, seq))
        if self.ack_delay_s and message.TYPE in (Ack.TYPE, Nak.TYPE):
            self._delayed.append((time.monotonic() + self.ack_delay_s, data))
        else:
            self._write(data)

    def _send_due(self, now: float) -> None:
        for item in [d for d in self._delayed if d[0] <= now]:
            self._delayed.remove(item)
            self._write(item[1])
        if not self._session or not self._outbox or now < self._outbox[0].resend_at:
            return
        head = self._outbox[0]
        head.tries += 1
        if head.tries == self.retries + 2:
            log.warning("no ACK for seq %d after %d tries: resending once a second", head.frame.seq,
                        self.retries + 1)
        head.resend_at = now + (self.retry_s if head.tries <= self.retries else SLOW_RETRY_S)
        self._write(encode_frame(head.frame))

    def _write(self, data: bytes, noisy: bool = True) -> None:
        if self._master is None:
            return
        if noisy:
            data = self._corrupt(data)
        self._pace(len(data))
        try:
            while data:
                data = data[os.write(self._master, data):]
        except OSError:
            pass                # nobody reading (buffer full) or the pty is gone: bytes lost, as on a wire

    def _pace(self, n_bytes: int) -> None:
        if self.baud:
            time.sleep(n_bytes * 10 / self.baud)

    def _corrupt(self, data: bytes) -> bytes:
        if not self.noise:
            return data
        out = bytearray()
        for byte in data:
            if self._rng.random() < self.noise:
                self.corrupted += 1
                if self._rng.random() < 0.5:
                    continue
                byte ^= 1 << self._rng.randrange(8)
            out.append(byte)
        return bytes(out)

    # ---- the cable --------------------------------------------------------------------------
    def _plug(self) -> None:
        if self._master is not None:
            return
        master, slave = os.openpty()
        tty.setraw(slave)               # no echo or line editing before the host opens its side
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._session = False
        self.decoder.reset()
        if self.link_path:
            staging = f"{self.link_path}.new"
            os.symlink(os.ttyname(slave), staging)
            os.replace(staging, self.link_path)

    def _unplug(self) -> None:
        if self._master is None:
            return
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = None
        self._session = False
        self._delayed.clear()
        if self.link_path and os.path.islink(self.link_path):
            os.unlink(self.link_path)


def run_console(sim: FirmwareSimulator, lines, out) -> int:
    """`edge firmware-sim`: serve until interrupted; stdin lines press buttons or pull the cable."""
    def replug():
        sim.replug()
        print(f"plugged in again on {sim.path}", file=out, flush=True)

    commands = {"start": lambda: sim.press(ButtonId.START), "stop": lambda: sim.press(ButtonId.STOP),
                "unplug": sim.unplug, "replug": replug}
    with sim:
        print(f"firmware simulator on {sim.path} ({sim.fields} fields, settle {sim.settle_s * 1000:g} ms, "
              f"noise {sim.noise:g}); type start, stop, unplug, replug or status; Ctrl-C ends", file=out,
              flush=True)
        try:
            for line in lines:
                word = line.strip()
                if word in commands:
                    commands[word]()
                elif word == "status":
                    print(_status(sim), file=out, flush=True)
                elif word:
                    print(f"unknown command {word!r}", file=out, flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    print(_status(sim), file=out, flush=True)
    return 0


def _status(sim: FirmwareSimulator) -> str:
    return (f"field {sim.field} of {sim.fields}, moves {sim.moves}, light {sim.light}, "
            f"tallies {len(sim.tallies)}, handshakes {sim.handshakes}, resent commands {sim.duplicates}, "
            f"damaged frames {sim.decoder.rejected_total}")
