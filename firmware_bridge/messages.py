"""The messages of protocol version 1 and their payload layouts (little-endian, see PROTOCOL.md)."""
from __future__ import annotations

import struct
from dataclasses import astuple, dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar

from firmware_bridge.framing import MAX_PAYLOAD, Frame

PROTOCOL_VERSION = 1
MAX_NAME = 32
MAX_TEXT = 200
MAX_CLASSES = (MAX_PAYLOAD - 9) // 4


class MsgType(IntEnum):
    HELLO = 0x01
    PING = 0x02
    PONG = 0x03
    ACK = 0x04
    NAK = 0x05
    ERROR = 0x06
    FIELD_READY = 0x10
    BUTTON = 0x11
    SCAN_COMPLETE = 0x12
    NEXT_FIELD = 0x20
    SET_LIGHT = 0x21
    SHOW_TALLY = 0x22
    TARGET_REACHED = 0x23
    STATUS = 0x24


class Capability(IntFlag):
    STAGE = 0x01
    FOCUS = 0x02
    LIGHT = 0x04
    DISPLAY = 0x08
    BUTTONS = 0x10


class NakReason(IntEnum):
    UNKNOWN_TYPE = 1
    BAD_PAYLOAD = 2
    HELLO_FIRST = 3
    VERSION = 4
    BUSY = 5


class ButtonId(IntEnum):
    START = 1
    STOP = 2


class ErrorCode(IntEnum):
    STAGE_FAULT = 1
    LIGHT_FAULT = 2
    FOCUS_FAULT = 3
    OTHER = 255


class StatusCode(IntEnum):
    """What a host STATUS message reports to the device (its text is for the display and log)."""
    FIELD_QUALITY = 1   # a field was not counted: out of focus, badly exposed, ... (the text says which)
    DRIFT_ALARM = 2     # a drift statistic left its band: the count needs a look before it is trusted
    PROVISIONAL = 3     # the tally shown is provisional: cells in review may change the differential


class ProtocolError(ValueError):
    """A frame with a good CRC whose content this side cannot use."""


class UnknownType(ProtocolError):
    pass


class PayloadError(ProtocolError):
    pass


class _Fixed:
    """A message whose payload is one struct layout of its fields, in order."""
    TYPE: ClassVar[MsgType]
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<")

    def pack(self) -> bytes:
        try:
            return self.LAYOUT.pack(*astuple(self))
        except struct.error as exc:
            raise ValueError(f"{self.TYPE.name}: {exc}") from None

    @classmethod
    def unpack(cls, payload: bytes):
        if len(payload) != cls.LAYOUT.size:
            raise PayloadError(f"{cls.TYPE.name} payload is {len(payload)} bytes, expected {cls.LAYOUT.size}")
        return cls(*cls.LAYOUT.unpack(payload))


@dataclass(frozen=True)
class Hello:
    TYPE: ClassVar = MsgType.HELLO
    HEAD: ClassVar = struct.Struct("<BH")
    version: int
    capabilities: int
    name: str = ""

    def pack(self) -> bytes:
        name = self.name.encode("ascii")[:MAX_NAME]
        return self.HEAD.pack(self.version, self.capabilities) + name

    @classmethod
    def unpack(cls, payload: bytes) -> Hello:
        if not cls.HEAD.size <= len(payload) <= cls.HEAD.size + MAX_NAME:
            raise PayloadError(f"HELLO payload is {len(payload)} bytes")
        version, caps = cls.HEAD.unpack_from(payload)
        return cls(version, caps, payload[cls.HEAD.size:].decode("ascii", "replace"))


@dataclass(frozen=True)
class Ping(_Fixed):
    TYPE: ClassVar = MsgType.PING
    LAYOUT: ClassVar = struct.Struct("<I")
    nonce: int


@dataclass(frozen=True)
class Pong(_Fixed):
    TYPE: ClassVar = MsgType.PONG
    LAYOUT: ClassVar = struct.Struct("<I")
    nonce: int


@dataclass(frozen=True)
class Ack(_Fixed):
    TYPE: ClassVar = MsgType.ACK


@dataclass(frozen=True)
class Nak(_Fixed):
    TYPE: ClassVar = MsgType.NAK
    LAYOUT: ClassVar = struct.Struct("<B")
    reason: int


@dataclass(frozen=True)
class DeviceError:
    TYPE: ClassVar = MsgType.ERROR
    code: int
    text: str = ""

    def pack(self) -> bytes:
        return struct.pack("<B", self.code) + self.text.encode("ascii", "replace")[:MAX_TEXT]

    @classmethod
    def unpack(cls, payload: bytes) -> DeviceError:
        if not 1 <= len(payload) <= 1 + MAX_TEXT:
            raise PayloadError(f"ERROR payload is {len(payload)} bytes")
        return cls(payload[0], payload[1:].decode("ascii", "replace"))


@dataclass(frozen=True)
class HostStatus(DeviceError):
    """STATUS: the host's counterpart of ERROR, same layout (`u8 code`, ASCII text)."""
    TYPE: ClassVar = MsgType.STATUS


@dataclass(frozen=True)
class FieldReady(_Fixed):
    TYPE: ClassVar = MsgType.FIELD_READY
    LAYOUT: ClassVar = struct.Struct("<Iiii")
    field_id: int
    x_nm: int
    y_nm: int
    focus_nm: int


@dataclass(frozen=True)
class Button(_Fixed):
    TYPE: ClassVar = MsgType.BUTTON
    LAYOUT: ClassVar = struct.Struct("<B")
    button: int


@dataclass(frozen=True)
class ScanComplete(_Fixed):
    TYPE: ClassVar = MsgType.SCAN_COMPLETE
    LAYOUT: ClassVar = struct.Struct("<I")
    fields: int


@dataclass(frozen=True)
class NextField(_Fixed):
    TYPE: ClassVar = MsgType.NEXT_FIELD
    LAYOUT: ClassVar = struct.Struct("<I")
    field_id: int


@dataclass(frozen=True)
class SetLight(_Fixed):
    TYPE: ClassVar = MsgType.SET_LIGHT
    LAYOUT: ClassVar = struct.Struct("<H")
    permille: int


@dataclass(frozen=True)
class ShowTally:
    TYPE: ClassVar = MsgType.SHOW_TALLY
    HEAD: ClassVar = struct.Struct("<IIB")
    counts: tuple[int, ...]
    rejected: int
    target: int

    def pack(self) -> bytes:
        if len(self.counts) > MAX_CLASSES:
            raise ValueError(f"SHOW_TALLY: {len(self.counts)} classes, at most {MAX_CLASSES} fit")
        try:
            return (self.HEAD.pack(self.target, self.rejected, len(self.counts))
                    + struct.pack(f"<{len(self.counts)}I", *self.counts))
        except struct.error as exc:
            raise ValueError(f"SHOW_TALLY: {exc}") from None

    @classmethod
    def unpack(cls, payload: bytes) -> ShowTally:
        if len(payload) < cls.HEAD.size:
            raise PayloadError(f"SHOW_TALLY payload is {len(payload)} bytes")
        target, rejected, n = cls.HEAD.unpack_from(payload)
        if len(payload) != cls.HEAD.size + 4 * n:
            raise PayloadError(f"SHOW_TALLY payload is {len(payload)} bytes for {n} classes")
        return cls(struct.unpack_from(f"<{n}I", payload, cls.HEAD.size), rejected, target)


@dataclass(frozen=True)
class TargetReached(_Fixed):
    TYPE: ClassVar = MsgType.TARGET_REACHED
    LAYOUT: ClassVar = struct.Struct("<I")
    counted: int


MESSAGES = {cls.TYPE: cls for cls in (Hello, Ping, Pong, Ack, Nak, DeviceError, FieldReady, Button,
                                      ScanComplete, NextField, SetLight, ShowTally, TargetReached, HostStatus)}
# Both are sent until acknowledged (ACK or NAK with the same sequence number); see PROTOCOL.md.
DEVICE_EVENTS = frozenset({MsgType.ERROR, MsgType.FIELD_READY, MsgType.BUTTON, MsgType.SCAN_COMPLETE})
HOST_COMMANDS = frozenset({MsgType.NEXT_FIELD, MsgType.SET_LIGHT, MsgType.SHOW_TALLY, MsgType.TARGET_REACHED,
                           MsgType.STATUS})


def to_frame(message, seq: int) -> Frame:
    return Frame(message.TYPE, seq, message.pack())


def from_frame(frame: Frame):
    """The message in a frame; UnknownType or PayloadError when it cannot be read."""
    cls = MESSAGES.get(frame.type)
    if cls is None:
        raise UnknownType(f"unknown message type 0x{frame.type:02x}")
    return cls.unpack(frame.payload)
