"""Opening the serial port: a device path or any pyserial URL (loop://, socket://host:port, ...)."""
from __future__ import annotations

import serial

READ_TIMEOUT_S = 0.05
WRITE_TIMEOUT_S = 1.0
MAX_BAUD = 12_000_000   # the fastest USB-serial bridges (FT232H class)


class LinkError(OSError):
    """The microscope link cannot be used; the message is one line for the user."""


def open_port(port: str, baud: int) -> serial.SerialBase:
    """An open, flushed port; LinkError naming the port and the reason when that is impossible."""
    if isinstance(baud, bool) or not isinstance(baud, int) or not 0 < baud <= MAX_BAUD:
        raise LinkError(f"impossible baud rate {baud!r} for {port}: "
                        f"give a whole number from 1 to {MAX_BAUD}, e.g. 115200")
    try:
        conn = serial.serial_for_url(port, baudrate=baud, timeout=READ_TIMEOUT_S,
                                     write_timeout=WRITE_TIMEOUT_S)
    except ValueError as exc:
        raise LinkError(f"cannot use {port} at {baud} baud: {exc}") from None
    except (serial.SerialException, OSError) as exc:
        raise LinkError(f"cannot open microscope serial port {port}: {_one_line(exc)}") from None
    conn.reset_input_buffer()
    return conn


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
