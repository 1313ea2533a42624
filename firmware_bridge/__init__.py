"""Serial link to the microscope's firmware (pyserial): field ready, next field, tally, stop.

The protocol, the host side and the firmware simulator arrive with the serial
bridge issue; until then `edge run` takes a field per frame, as it does for any
source without firmware.
"""
