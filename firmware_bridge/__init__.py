"""Serial link to the microscope's firmware (pyserial): field ready, next field, tally, stop.

    from firmware_bridge import FieldReady, FirmwareLink
    with FirmwareLink("/dev/ttyACM0", 115200).open() as link:
        event = link.wait_event(timeout=5)
        if isinstance(event, FieldReady):
            link.show_tally(counts, rejected, target)
            link.next_field(event.field_id)

PROTOCOL.md is the wire protocol; framing.py and messages.py encode it,
link.py is the host side, simulator.py a device on a pseudo-terminal.
"""
from firmware_bridge.link import CommandRefused, FirmwareLink, LinkLost, LinkRestored, LinkState
from firmware_bridge.messages import Button, ButtonId, DeviceError, FieldReady, ScanComplete, StatusCode
from firmware_bridge.transport import LinkError

__all__ = ["Button", "ButtonId", "CommandRefused", "DeviceError", "FieldReady", "FirmwareLink", "LinkError",
           "LinkLost", "LinkRestored", "LinkState", "ScanComplete", "StatusCode"]
