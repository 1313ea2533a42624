"""Frames on the wire: COBS byte stuffing, a 0x00 delimiter and CRC-16/CCITT-FALSE (see PROTOCOL.md).

Pure functions and one stream decoder. The decoder never raises out of feed():
garbage is counted by kind, logged, and skipped up to the next delimiter.
"""
from __future__ import annotations

import binascii
import logging
import struct
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)

DELIMITER = 0x00
MAX_PAYLOAD = 240
HEADER = struct.Struct("<BBB")          # payload length, message type, sequence number
CRC = struct.Struct("<H")
MAX_BODY = HEADER.size + MAX_PAYLOAD + CRC.size
MAX_ENCODED = MAX_BODY + MAX_BODY // 254 + 1


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR."""
    return binascii.crc_hqx(data, 0xFFFF)


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result holds no 0x00 byte."""
    out = bytearray([0])
    code_at, code = 0, 1
    for byte in data:
        if byte:
            out.append(byte)
            code += 1
        if not byte or code == 0xFF:
            out[code_at] = code
            code_at, code = len(out), 1
            out.append(0)
    out[code_at] = code
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode; ValueError on a block that is malformed."""
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        end = i + code
        if code == 0 or end > len(data) or 0 in data[i + 1:end]:
            raise ValueError("malformed COBS block")
        out += data[i + 1:end]
        i = end
        if code != 0xFF and i < len(data):
            out.append(0)
    return bytes(out)


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""


def encode_frame(frame: Frame) -> bytes:
    """The bytes to send: COBS(length, type, seq, payload, CRC) followed by the 0x00 delimiter."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(frame.payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    body = HEADER.pack(len(frame.payload), frame.type, frame.seq) + frame.payload
    return cobs_encode(body + CRC.pack(crc16(body))) + bytes([DELIMITER])


def parse_body(body: bytes) -> Frame:
    """A decoded (un-stuffed) frame body to a Frame; ValueError naming what is wrong."""
    if len(body) < HEADER.size + CRC.size:
        raise ValueError("short frame")
    length, type_, seq = HEADER.unpack_from(body)
    if len(body) != HEADER.size + length + CRC.size:
        raise ValueError("length field does not match the frame")
    (crc,) = CRC.unpack_from(body, len(body) - CRC.size)
    if crc != crc16(body[:-CRC.size]):
        raise ValueError("bad CRC")
    return Frame(type_, seq, bytes(body[HEADER.size:-CRC.size]))


class FrameDecoder:
    """Turns a byte stream into frames; damaged frames are dropped and counted in `rejected`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._overflowed = False
        self.accepted = 0
        self.rejected: Counter[str] = Counter()    # by reason
        self.rejected_total = 0

    def reset(self) -> None:
        """Forget a partial frame (a new connection); the counters stay."""
        self._buffer.clear()
        self._overflowed = False

    def feed(self, data: bytes) -> list[Frame]:
        frames = []
        for byte in data:
            if byte != DELIMITER:
                if len(self._buffer) < MAX_ENCODED:
                    self._buffer.append(byte)
                else:
                    self._overflowed = True
                continue
            if self._overflowed:
                self._reject("overlong frame")
            elif self._buffer:
                frame = self._parse(bytes(self._buffer))
                if frame is not None:
                    frames.append(frame)
            self.reset()
        return frames

    def _parse(self, encoded: bytes) -> Frame | None:
        try:
            frame = parse_body(cobs_decode(encoded))
        except ValueError as exc:
            self._reject(str(exc))
            return None
        self.accepted += 1
        return frame

    def _reject(self, why: str) -> None:
        self.rejected[why] += 1
        self.rejected_total += 1
        log.info("dropped a damaged frame: %s", why)
