"""Framing and messages of the microscope protocol: vectors from PROTOCOL.md, round trips, decoder fuzz."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.framing import (
    MAX_ENCODED, MAX_PAYLOAD, Frame, FrameDecoder, cobs_decode, cobs_encode, crc16, encode_frame)
from firmware_bridge.messages import (
    MESSAGES, Ack, Button, DeviceError, FieldReady, Hello, MsgType, Nak, NextField, Ping, Pong,
    ProtocolError, ScanComplete, SetLight, ShowTally, TargetReached, UnknownType, from_frame, to_frame)

u8, u16, u32 = (st.integers(0, 2**n - 1) for n in (8, 16, 32))
i32 = st.integers(-2**31, 2**31 - 1)
ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126))
MESSAGE = st.one_of(
    st.builds(Hello, u8, u16, ascii_text.filter(lambda s: len(s) <= 32)),
    st.builds(Ping, u32), st.builds(Pong, u32), st.just(Ack()), st.builds(Nak, u8),
    st.builds(DeviceError, u8, ascii_text.filter(lambda s: len(s) <= 200)),
    st.builds(FieldReady, u32, i32, i32, i32), st.builds(Button, u8), st.builds(ScanComplete, u32),
    st.builds(NextField, u32), st.builds(SetLight, u16),
    st.builds(ShowTally, st.lists(u32, max_size=57).map(tuple), u32, u32), st.builds(TargetReached, u32))
FRAME = st.builds(Frame, u8, u8, st.binary(max_size=MAX_PAYLOAD))


def test_crc_is_ccitt_false_with_the_documented_check_value():
    assert crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize("message, seq, wire", [
    (Ping(0x12345678), 1, "0a 04 02 01 78 56 34 12 e3 c1 00"),
    (Ack(), 42, "01 05 04 2a 70 85 00"),
    (NextField(3), 7, "05 04 20 07 03 01 01 03 08 f9 00"),
    (FieldReady(3, 700_000, -350_000, 1295), 9,
     "05 10 10 09 03 01 01 04 60 ae 0a 07 d0 a8 fa ff 0f 05 01 03 bf 4b 00"),
])
def test_the_worked_examples_of_protocol_md(message, seq, wire):
    data = bytes.fromhex(wire)
    assert encode_frame(to_frame(message, seq)) == data
    (frame,) = FrameDecoder().feed(data)
    assert from_frame(frame) == message and frame.seq == seq


@given(st.binary(max_size=600))
def test_cobs_round_trip_has_no_zero_and_bounded_overhead(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert cobs_decode(encoded) == data


def test_cobs_handles_blocks_of_exactly_254_non_zero_bytes():
    for data in (b"\x01" * 254, b"\x01" * 254 + b"\x00", b"\x00" + b"\x02" * 508):
        assert cobs_decode(cobs_encode(data)) == data


@given(MESSAGE, u8)
def test_every_message_survives_encoding_and_the_stream_decoder(message, seq):
    wire = encode_frame(to_frame(message, seq))
    assert len(wire) <= MAX_ENCODED + 1
    (frame,) = FrameDecoder().feed(wire)
    assert frame.seq == seq and from_frame(frame) == message


def test_values_that_do_not_fit_their_fields_are_refused_when_packing():
    for message in (SetLight(70_000), NextField(-1), ShowTally((1, -2), 0, 0), ShowTally((0,) * 58, 0, 0)):
        with pytest.raises(ValueError, match=message.TYPE.name):
            message.pack()
    with pytest.raises(ValueError, match="payload"):
        encode_frame(Frame(MsgType.PING, 0, bytes(MAX_PAYLOAD + 1)))


@given(st.sampled_from(sorted(MESSAGES)), st.binary(max_size=64))
def test_reading_any_payload_gives_a_message_or_a_protocol_error(type_, payload):
    try:
        message = from_frame(Frame(type_, 0, payload))
    except ProtocolError:
        return
    assert message.TYPE == type_


def test_an_unknown_type_is_named():
    with pytest.raises(UnknownType, match="0x7f"):
        from_frame(Frame(0x7F, 0, b""))


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_the_decoder_never_raises_on_garbage_and_invents_no_frame(chunks):
    decoder = FrameDecoder()
    stream = b"".join(chunks)
    frames = [f for chunk in chunks for f in decoder.feed(chunk)]
    for frame in frames:                # a frame comes out only if its exact bytes went in
        assert encode_frame(frame)[:-1] in stream
    pieces = [p for p in stream.split(b"\x00")[:-1] if p]
    assert decoder.accepted == len(frames)
    assert decoder.accepted + sum(decoder.rejected.values()) == len(pieces)


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        i = where % (len(out) + 1)
        if kind == "flip" and i < len(out):
            out[i] ^= 1 << (value % 8)
        elif kind == "drop" and i < len(out):
            del out[i]
        elif kind == "insert":
            out.insert(i, value)
    return bytes(out)


EDITS = st.lists(st.tuples(st.sampled_from(["flip", "drop", "insert"]), st.integers(0, 300), u8),
                 min_size=1, max_size=3)


# Derandomised: a multi-byte edit slips past a CRC-16 with probability near 2**-16 (far less with the
# length check), so a fixed sample keeps the test deterministic; single-bit errors are checked exhaustively below.
@settings(derandomize=True, max_examples=300)
@given(st.lists(FRAME, min_size=3, max_size=3), EDITS)
def test_a_damaged_frame_is_never_accepted_and_its_neighbours_survive(frames, edits):
    first, middle, last = (encode_frame(f) for f in frames)
    damaged = _mutate(middle[:-1], edits) + b"\x00"
    decoder = FrameDecoder()
    got = decoder.feed(first) + decoder.feed(damaged) + decoder.feed(last)
    assert got[0] == frames[0] and got[-1] == frames[2]
    for frame in got[1:-1]:
        assert frame == frames[1]       # only if the edits left it whole (e.g. an inserted byte then dropped)
    if len(got) == 2:
        assert sum(decoder.rejected.values()) >= 1


@pytest.mark.parametrize("message", [Ping(0xDEADBEEF), FieldReady(41, 123_456, -7, 0),
                                     ShowTally((310, 12, 0, 45, 2), 9, 500), Hello(1, 31, "firmware 2.3")])
def test_every_single_bit_error_and_every_lost_byte_is_caught(message):
    wire = encode_frame(to_frame(message, 200))
    body = wire[:-1]
    variants = [bytes(body[:i]) + bytes([body[i] ^ (1 << b)]) + body[i + 1:]
                for i in range(len(body)) for b in range(8)]
    variants += [body[:i] + body[i + 1:] for i in range(len(body))]
    for variant in variants:
        decoder = FrameDecoder()
        assert decoder.feed(variant + b"\x00") == [], variant.hex(" ")


def test_an_overlong_run_without_delimiter_is_dropped_and_the_next_frame_read():
    decoder = FrameDecoder()
    good = encode_frame(to_frame(Ping(7), 3))
    assert decoder.feed(b"\x01" * 5000) == []
    assert decoder.feed(b"\x00" + good) == [to_frame(Ping(7), 3)]
    assert decoder.rejected == {"overlong frame": 1}


def test_a_frame_split_across_reads_is_reassembled():
    wire = encode_frame(to_frame(ShowTally((1, 2, 3), 4, 5), 9))
    decoder = FrameDecoder()
    got = [f for byte in wire for f in decoder.feed(bytes([byte]))]
    assert got == [to_frame(ShowTally((1, 2, 3), 4, 5), 9)]


def test_payload_layouts_are_little_endian_and_fixed_width():
    assert FieldReady(1, -1, 2, 3).pack() == struct.pack("<Iiii", 1, -1, 2, 3)
    assert ShowTally((7, 8), 2, 100).pack() == struct.pack("<IIB2I", 100, 2, 2, 7, 8)
    assert Hello(1, 0x1F, "sim").pack() == b"\x01\x1f\x00sim"
