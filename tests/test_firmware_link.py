"""The host link against the firmware simulator, over real pseudo-terminals."""
import os
import socket
import threading
import time
import tty

import pytest

import firmware_bridge.link as link_module
from firmware_bridge.framing import encode_frame
from firmware_bridge.link import CommandRefused, FirmwareLink, LinkLost, LinkRestored, LinkState
from firmware_bridge.messages import (
    Button, ButtonId, Capability, FieldReady, ScanComplete, SetLight, ShowTally, to_frame)
from firmware_bridge.simulator import FirmwareSimulator
from firmware_bridge.transport import LinkError, open_port

FAST = dict(ack_timeout_s=0.05, retries=8, heartbeat_s=0.5, backoff_s=(0.02, 0.2), command_timeout_s=5.0)


@pytest.fixture
def sim(tmp_path):
    with FirmwareSimulator(fields=6, settle_s=0.002, link_path=str(tmp_path / "scope"), retry_s=0.05,
                           retries=8) as simulator:
        yield simulator


def open_link(port, **options):
    return FirmwareLink(port, **{**FAST, **options}).open()


def scan(link, on_field=None):
    """Count every field as the counting loop would; returns the field ids and the other events."""
    fields, others = [], []
    while True:
        event = link.wait_event(timeout=5)
        assert event is not None, f"no event after fields {fields}"
        if isinstance(event, ScanComplete):
            return fields, others
        if not isinstance(event, FieldReady):
            others.append(event)
            continue
        fields.append(event.field_id)
        if on_field:
            on_field(event)
        link.show_tally((event.field_id, 10 * event.field_id), event.field_id % 2, 500)
        link.next_field(event.field_id)


def sent_tallies(fields):
    return [ShowTally((f, 10 * f), f % 2, 500) for f in fields]


def test_handshake_names_the_device_and_the_link_is_ready(sim):
    with open_link(sim.path) as link:
        assert link.state is LinkState.READY
        assert link.device.version == 1 and link.device.name == "edge firmware-sim"
        assert Capability(link.device.capabilities) & Capability.STAGE
        assert 0 < link.ping() < 1.0
        assert sim.handshakes == 1
    assert link.state is LinkState.CLOSED


def test_a_whole_scan_cycles_field_ready_tally_and_next_field(sim):
    with open_link(sim.path) as link:
        positions = []
        fields, others = scan(link, on_field=lambda e: positions.append((e.x_nm, e.y_nm)))
        assert fields == list(range(6)) and others == []
        assert sim.tallies == sent_tallies(fields) and sim.moves == 6
        pitch = sim.pitch_nm                       # 3 columns, the second row walked backwards
        assert positions == [(0, 0), (pitch, 0), (2 * pitch, 0), (2 * pitch, pitch), (pitch, pitch), (0, pitch)]
        assert link.stats.retries == 0 and link.stats.bad_frames == 0


def test_target_reached_stops_the_stage(sim):
    with open_link(sim.path) as link:
        for expected in range(3):
            event = link.wait_event(timeout=5)
            assert isinstance(event, FieldReady) and event.field_id == expected
            if expected < 2:
                link.next_field(event.field_id)
        link.target_reached(517)
        link.next_field(2)
        assert link.wait_event(timeout=0.2) is None
        assert sim.counted_at_target == 517 and sim.field == 2 and sim.scan_over


def test_light_level_and_a_command_the_device_refuses(sim):
    with open_link(sim.path) as link:
        link.set_light(250)
        assert sim.light == 250
        with pytest.raises(ValueError, match="0..1000"):
            link.set_light(1001)
        with pytest.raises(CommandRefused, match="refused SET_LIGHT: BAD_PAYLOAD"):
            link._command(SetLight(1001))              # past the host's own check, as a buggy host would
        assert sim.light == 250


def test_a_noisy_line_at_115200_baud_loses_no_field_and_no_tally():
    with FirmwareSimulator(fields=24, settle_s=0.002, noise=0.01, seed=3, retry_s=0.05, retries=8,
                           baud=115200) as sim:
        with open_link(sim.path) as link:
            fields, _ = scan(link)
            stats = link.stats
    assert fields == list(range(24))
    assert sim.tallies == sent_tallies(fields) and sim.moves == 24
    assert sim.corrupted > 0 and stats.retries > 0
    assert stats.bad_frames > 0 and sum(sim.decoder.rejected.values()) > 0


def test_duplicated_and_reordered_events_are_delivered_once(sim):
    with open_link(sim.path) as link:
        start, stop = (encode_frame(to_frame(Button(b), seq)) for b, seq in ((ButtonId.START, 201),
                                                                              (ButtonId.STOP, 202)))
        sim.send_raw(start + start + stop + start)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and link.stats.duplicates < 2:
            time.sleep(0.01)
        events = iter(lambda: link.wait_event(timeout=0.1), None)
        assert [e.button for e in events if isinstance(e, Button)] == [ButtonId.START, ButtonId.STOP]
        assert link.stats.duplicates == 2


def test_a_late_ack_causes_a_resend_that_the_device_carries_out_once(sim):
    with open_link(sim.path) as link:
        sim.ack_delay_s = 0.08                     # longer than the host's 50 ms answer timeout
        link.show_tally((3, 4), 1, 100)
        time.sleep(0.15)
        assert sim.tallies == [ShowTally((3, 4), 1, 100)]
        assert sim.duplicates >= 1 and link.stats.retries >= 1 and link.stats.stale_replies >= 1


def test_unplug_and_replug_is_a_counted_gap_and_no_field_is_lost_or_doubled(sim):
    def pull_cable_at_field_2(event):
        if event.field_id == 2:
            sim.unplug()
            threading.Timer(0.3, sim.replug).start()

    with open_link(sim.path) as link:
        start = time.monotonic()
        fields, others = scan(link, on_field=pull_cable_at_field_2)
        assert time.monotonic() - start > 0.3
        assert fields == list(range(6))
        assert [type(e) for e in others] == [LinkLost, LinkRestored]
        assert others[1].gap_s >= 0.25
        assert link.stats.reconnects == 1 and link.stats.gap_s == others[1].gap_s
        assert link.stats.duplicates >= 1          # field 2, announced again after the HELLO, was dropped
    assert sim.handshakes == 2 and sim.tallies == sent_tallies(fields)


def test_a_device_that_falls_silent_is_noticed_by_the_heartbeat_and_rejoined(sim):
    with open_link(sim.path) as link:
        assert isinstance(link.wait_event(timeout=5), FieldReady)
        sim.noise = 1.0                             # every byte garbled: the device seems dead
        lost = link.wait_event(timeout=5)
        assert isinstance(lost, LinkLost) and "heartbeat" in lost.reason
        time.sleep(0.3)                             # reconnect attempts fail meanwhile
        sim.noise = 0.0
        assert isinstance(link.wait_event(timeout=5), LinkRestored)
        assert link.ping() < 1.0 and link.state is LinkState.READY


def test_a_wrong_port_or_baud_rate_is_one_clear_line(tmp_path):
    with pytest.raises(LinkError, match="cannot open microscope serial port .*nothing-here") as exc:
        FirmwareLink(str(tmp_path / "nothing-here")).open()
    assert "\n" not in str(exc.value)
    for baud in (0, -9600, 50_000_000, "fast", 9600.5):
        with pytest.raises(LinkError, match="impossible baud rate"):
            FirmwareLink("loop://", baud).open()
    with pytest.raises(LinkError, match="protocol 'nope' not known"):
        FirmwareLink("nope://x").open()


def test_a_port_with_no_microscope_behind_it_fails_the_handshake():
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with pytest.raises(LinkError, match="no answer to HELLO .* is the baud rate right"):
            open_link(os.ttyname(slave), retries=1)
    finally:
        os.close(master)
        os.close(slave)


def test_a_device_of_another_protocol_version_is_refused(sim, monkeypatch):
    monkeypatch.setattr(link_module, "PROTOCOL_VERSION", 2)
    with pytest.raises(LinkError, match="refused protocol version 2: VERSION"):
        open_link(sim.path)


def test_the_transport_takes_pyserial_urls():
    port = open_port("loop://", 115200)
    port.write(b"\x05hello\x00")
    assert port.read(7) == b"\x05hello\x00"
    port.close()

    with socket.create_server(("127.0.0.1", 0)) as server:
        def echo_once():
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(64))
        threading.Thread(target=echo_once, daemon=True).start()
        port = open_port(f"socket://127.0.0.1:{server.getsockname()[1]}", 115200)
        port.write(b"ping")
        assert port.read(4) == b"ping"
        port.close()
