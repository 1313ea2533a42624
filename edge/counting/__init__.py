"""The counting loop around the runtime: frame sources (cameras, folders, the stage), the session with
its durable records and review queue, the differential, field overlap and stillness, the firmware
link's fields, and the live display.

May import: edge.runtime, edge.synthetic (the simulated camera and stage), `firmware_bridge`, `calibration`.
"""
