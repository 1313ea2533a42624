"""Checking a settings section (of a manifest or of the command line) against its dataclass."""
from __future__ import annotations

from dataclasses import fields


def check_section(d: object, cls: type, section: str) -> None:
    """ValueError unless `d` is an object whose keys are all fields of `cls`, naming the known ones."""
    if not isinstance(d, dict):
        raise ValueError(f"the {section} section must be an object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {section} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
