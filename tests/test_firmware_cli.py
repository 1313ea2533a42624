"""`edge firmware-sim` as a bench user runs it: a pty path to connect to, buttons on stdin, Ctrl-C ends."""
import re
import signal
import subprocess
import sys

from firmware_bridge.link import FirmwareLink
from firmware_bridge.messages import Button, ButtonId, FieldReady


def test_firmware_sim_serves_a_host_and_takes_buttons_from_stdin(tmp_path):
    link_path = tmp_path / "scope"
    # Ctrl-C as at a terminal: a test run started in the background (no job control) has SIGINT ignored,
    # and a child would inherit that
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "firmware-sim", "--fields", "3", "--settle-ms", "1",
                             "--baud", "115200", "--link", str(link_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        banner = proc.stdout.readline()
        assert re.match(rf"firmware simulator on {re.escape(str(link_path))} \(3 fields, settle 1 ms", banner)
        with FirmwareLink(str(link_path), ack_timeout_s=0.1).open() as link:
            event = link.wait_event(timeout=30)
            assert isinstance(event, FieldReady) and event.field_id == 0
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            assert link.wait_event(timeout=30) == Button(ButtonId.STOP)
            link.next_field(0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "field 0 of 3" in out and "handshakes 1" in out   # halted by STOP: the stage stayed on field 0


def test_firmware_sim_refuses_impossible_settings_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "firmware-sim", "--noise", "1.5"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "edge: error: --fields must be at least 1, --settle-ms at least 0, --noise from 0 to below 1, "
        "and --baud positive"]
